//! `cargo xtask bench serve`: `imagestore serve` over HTTP, with `curl` as the client, against
//! Debian's `docker-registry` (distribution) serving the same bytes from the same disk.
//!
//! * upload: VIC's WriteImage (`POST /storage/{store}?image_id=…&parent_id=scratch&sum=…`) of
//!   the 1 GiB benchmark layer of `bench write` (streamed by `curl -T`; the server hashes,
//!   checks, indexes and stores it) against a monolithic blob upload of the same bytes to the
//!   registry (`POST /v2/<repo>/blobs/uploads/` then `PUT <location>&digest=…`, where the
//!   registry hashes and stores it). Target ratio ≤ 1.0. The server's peak RSS over the
//!   uploads is read from its `VmHWM` (target ≤ 64 MiB).
//! * download: the raw layer (`GET /v1/stores/{store}/images/{id}/layer`) against the
//!   registry's blob GET. Target ratio ≤ 1.0.
//! * GetImage: `GET /storage/{store}/info/{id}` from 32 concurrent clients (`curl --parallel`),
//!   reporting requests per second and the 99th percentile latency.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{report, runs};
use crate::util::{Server, median, need, output, run, wait_until, work_dir};

/// GetImage requests sent by the concurrency part.
const GET_REQUESTS: usize = 6400;
/// Concurrent GetImage clients.
const GET_CLIENTS: usize = 32;

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// True once something answers HTTP on `port`.
fn answers(port: u16, path: &str) -> bool {
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-m", "2"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `docker-registry serve` on a fresh root in `dir`.
fn registry(dir: &Path) -> Result<(Server, u16)> {
    let port = free_port()?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log"))?)
        .spawn()
        .context("starting docker-registry")?;
    let server = Server {
        name: "docker-registry".into(),
        child,
    };
    wait_until("docker-registry", Duration::from_secs(30), || {
        answers(port, "/v2/")
    })?;
    Ok((server, port))
}

/// `imagestore serve` over a fresh `file://` store in `dir`.
fn ours(bin: &Path, dir: &Path) -> Result<(Server, u16)> {
    let port = free_port()?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let url = format!("file://{}", dir.join("store").display());
    let child = Command::new(bin)
        .args(["--url", &url, "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log"))?)
        .spawn()
        .context("starting imagestore serve")?;
    let server = Server {
        name: "imagestore serve".into(),
        child,
    };
    wait_until("imagestore serve", Duration::from_secs(30), || {
        answers(port, "/healthz")
    })?;
    Ok((server, port))
}

/// Runs `curl` with `args`, returning its wall time; fails on an HTTP error.
fn curl(args: &[&str]) -> Result<f64> {
    let start = Instant::now();
    run(Command::new("curl")
        .args(["-sS", "-f", "-o", "/dev/null"])
        .args(args))?;
    Ok(start.elapsed().as_secs_f64())
}

/// The peak resident set of a live process, MiB.
fn peak_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmHWM")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// One monolithic blob upload to the registry: opens an upload session, then PUTs the bytes
/// with the digest.
fn registry_upload(port: u16, repo: &str, layer: &Path, digest: &str) -> Result<f64> {
    let start = Instant::now();
    let headers = output(Command::new("curl").args([
        "-sS",
        "-f",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        &format!("http://127.0.0.1:{port}/v2/{repo}/blobs/uploads/"),
    ]))?;
    let location = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .context("the registry gave no upload location")?;
    let location = if location.starts_with('/') {
        format!("http://127.0.0.1:{port}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!("{location}{sep}digest={digest}");
    run(Command::new("curl")
        .args(["-sS", "-f", "-o", "/dev/null", "-X", "PUT"])
        .args(["-H", "Content-Type: application/octet-stream", "-T"])
        .arg(layer)
        .arg(&put))?;
    Ok(start.elapsed().as_secs_f64())
}

/// GetImage from [`GET_CLIENTS`] concurrent clients: (requests per second, p99 seconds).
fn get_image_load(port: u16, dir: &Path) -> Result<(f64, f64)> {
    let config = dir.join("get.curl");
    let url = format!("http://127.0.0.1:{port}/storage/bench/info/layer0");
    let mut text = String::new();
    for _ in 0..GET_REQUESTS {
        text.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
    }
    std::fs::write(&config, text)?;
    let start = Instant::now();
    let out = output(
        Command::new("curl")
            .args([
                "-sS",
                "-f",
                "--no-progress-meter",
                "--parallel",
                "--parallel-immediate",
            ])
            .args(["--parallel-max", &GET_CLIENTS.to_string()])
            .args(["-w", "%{http_code} %{time_total}\\n", "-K"])
            .arg(&config),
    )?;
    let wall = start.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(GET_REQUESTS);
    for line in out.lines() {
        let (code, t) = line.split_once(' ').context("bad curl -w line")?;
        if code != "200" {
            bail!("GetImage answered {code}");
        }
        times.push(t.parse::<f64>()?);
    }
    if times.len() != GET_REQUESTS {
        bail!(
            "{} of {GET_REQUESTS} GetImage requests answered",
            times.len()
        );
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    Ok((GET_REQUESTS as f64 / wall, p99))
}

/// Runs the benchmark.
pub fn bench() -> Result<()> {
    need("curl", "curl")?;
    need("docker-registry", "docker-registry")?;
    let bin = crate::util::release_cli(None)?;
    let dir = work_dir("bench-serve")?;
    let layer = work_dir("bench-write")?.join("layer.tar");
    let size = super::write::layer(&layer)?;
    let digest = super::write::digest_of(&layer)?;
    eprintln!("layer: {size} bytes, {digest}");

    let (server, port) = ours(&bin, &dir.join("ours"))?;
    let (_registry, reg_port) = registry(&dir.join("registry"))?;
    curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name":"bench"}"#,
        &format!("http://127.0.0.1:{port}/storage"),
    ])?;

    let (mut up, mut reg_up, mut down, mut reg_down) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs() {
        let write = format!(
            "http://127.0.0.1:{port}/storage/bench?image_id=layer{i}&parent_id=scratch&sum={digest}"
        );
        let start = Instant::now();
        run(Command::new("curl")
            .args(["-sS", "-f", "-o", "/dev/null", "-X", "POST"])
            .args(["-H", "Content-Type: application/octet-stream", "-T"])
            .arg(&layer)
            .arg(&write))?;
        up.push(start.elapsed().as_secs_f64());
        // Each run uploads to a repository of its own; the registry stores blobs once, so the
        // first run is the one that lands the bytes, as ours lands a new image each run.
        reg_up.push(registry_upload(
            reg_port,
            &format!("bench{i}"),
            &layer,
            &digest,
        )?);
        down.push(curl(&[&format!(
            "http://127.0.0.1:{port}/v1/stores/bench/images/layer{i}/layer"
        )])?);
        reg_down.push(curl(&[&format!(
            "http://127.0.0.1:{reg_port}/v2/bench{i}/blobs/{digest}"
        )])?);
    }
    let rss = peak_mib(server.child.id())?;
    let (rps, p99) = get_image_load(port, &dir)?;
    let (up, reg_up) = (median(&mut up), median(&mut reg_up));
    let (down, reg_down) = (median(&mut down), median(&mut reg_down));
    report("serve-upload", up, "docker-registry", reg_up);
    report("serve-download", down, "docker-registry", reg_down);
    println!("RSS name=serve peak_mib={rss:.1} (over every upload and download; target <= 64)");
    println!(
        "LOAD name=serve-get-image clients={GET_CLIENTS} requests={GET_REQUESTS} rps={rps:.0} p99_ms={:.2}",
        p99 * 1000.0
    );
    Ok(())
}
