//! `cargo xtask schemathesis`: schemathesis (PyPI) against VIC's port-layer swagger subset as
//! `imagestore serve` publishes it (`/swagger.json`), with schemathesis' response checks.
//!
//! Builds the CLI, starts `imagestore serve --listen 127.0.0.1:0 --url file://<tmp>` as a
//! process, reads the address it bound from its log, runs `schemathesis run` with
//! `xtask/schemathesis.toml` (the per-operation check exclusions, each with its reason; the
//! same list is in `docs/server.md`), and stops the server by PID. schemathesis comes from
//! `target/venv` or the PATH (`python3 -m venv target/venv && target/venv/bin/pip install
//! 'schemathesis==4.32.5'`, the version the config file is written for). The checks are
//! schemathesis' response checks (`not_a_server_error`,
//! `status_code_conformance`, `content_type_conformance`, `response_headers_conformance`,
//! `response_schema_conformance`), chosen in the config file.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, describe, root, run, target_dir, work_dir};

/// How to install schemathesis where this command looks for it.
const INSTALL_HINT: &str =
    "python3 -m venv target/venv && target/venv/bin/pip install 'schemathesis==4.32.5'";

/// Test cases per operation and phase: enough to reach every status of every operation,
/// small enough to finish in about a minute on a loaded machine.
const MAX_EXAMPLES: &str = "40";

/// The whole run is stopped after this long.
const DEADLINE: Duration = Duration::from_secs(240);

fn schemathesis_program() -> Result<PathBuf> {
    crate::s3::program("schemathesis")
        .with_context(|| format!("schemathesis is not installed: {INSTALL_HINT}"))
}

/// The `imagestore serve` process, stopped by PID when dropped.
struct ServeProcess {
    child: Child,
    addr: String,
}

impl ServeProcess {
    fn start(cli: &PathBuf, store: &std::path::Path) -> Result<ServeProcess> {
        let mut cmd = Command::new(cli);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--url"])
            .arg(format!("file://{}", store.display()))
            .env("RUST_LOG", "warn,imagestore_server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("$ {}", describe(&cmd));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", describe(&cmd)))?;
        let (tx, rx) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(addr) = bound_addr(&line) {
                        let _ = tx.send(addr);
                    }
                    eprintln!("  [serve] {line}");
                }
            });
        }
        let mut server = ServeProcess {
            child,
            addr: String::new(),
        };
        server.addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => bail!("imagestore serve did not log the address it listens on within 60 s"),
        };
        Ok(server)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `127.0.0.1:<port>` (port not 0) in a log line.
fn bound_addr(line: &str) -> Option<String> {
    line.match_indices("127.0.0.1:").find_map(|(i, m)| {
        let port: String = line[i + m.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (port.parse::<u16>().ok()? != 0).then(|| format!("127.0.0.1:{port}"))
    })
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, String)> {
    use std::io::Write;
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {path}: not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until `GET /healthz` answers 200.
fn wait_healthy(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http(addr, "GET", "/healthz", "text/plain", b"") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not answer /healthz within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tar of `(path, content)`: directories end in `/`, symlinks' content is `->target`.
fn tar_of(entries: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        if let Some(dir) = path.strip_suffix('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            b.append_data(&mut h, dir, std::io::empty())?;
        } else if let Some(target) = content.strip_prefix("->") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            b.append_link(&mut h, path, target)?;
        } else {
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, path, content.as_bytes())?;
        }
    }
    Ok(b.into_inner()?)
}

/// Creates what `xtask/schemathesis.toml`'s dictionaries name: store `vic`, image `base` (a
/// gzip layer on scratch) and image `top` (on base) through VIC's own routes, and the
/// writable layer `rw` on top through the native API (ImportArchive's target).
fn populate(addr: &str) -> Result<()> {
    use sha2::Digest as _;
    let (status, body) = http(
        addr,
        "POST",
        "/storage",
        "application/json",
        br#"{"name":"vic"}"#,
    )?;
    if status != 201 {
        bail!("creating store vic: {status} {body}");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut gz,
        &tar_of(&[
            ("etc/", ""),
            ("etc/hosts", "127.0.0.1 localhost\n"),
            ("etc/motd", "hello\n"),
            ("bin/", ""),
            ("bin/sh", "->busybox"),
        ])?,
    )?;
    let base = gz.finish()?;
    let top = tar_of(&[("etc/hosts", "10.0.0.1 db\n"), ("etc/.wh.motd", "")])?;
    for (id, parent, layer) in [("base", "scratch", &base), ("top", "base", &top)] {
        let sum = sha2::Sha256::digest(layer);
        let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        let path = format!("/storage/vic?image_id={id}&parent_id={parent}&sum=sha256:{hex}");
        let (status, body) = http(addr, "POST", &path, "application/octet-stream", layer)?;
        if status != 201 {
            bail!("writing image {id}: {status} {body}");
        }
    }
    // VIC's API cannot make writable layers (its containers API does); the native one can.
    let (status, body) = http(
        addr,
        "PUT",
        "/v1/stores/vic/writables/rw?parent=top",
        "application/json",
        b"",
    )?;
    if status != 201 {
        bail!("creating writable layer rw: {status} {body}");
    }
    Ok(())
}

/// `cargo xtask schemathesis`.
pub fn schemathesis() -> Result<()> {
    run(cargo().args(["build", "-p", "imagestore-cli"]))?;
    schemathesis_with(&target_dir()?.join("debug/imagestore"))
}

/// The schemathesis run against the CLI binary `cli` (CI passes the one its test run built).
pub fn schemathesis_with(cli: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let program = schemathesis_program()?;
    let cli = cli.to_path_buf();
    let work = work_dir("schemathesis")?;
    let store = work.join(format!("store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let result = (|| -> Result<()> {
        let server = ServeProcess::start(&cli, &store)?;
        wait_healthy(&server.addr)?;
        populate(&server.addr)?;
        let mut cmd = Command::new(&program);
        // The checks and the per-operation exclusions are in the config file; the hooks
        // module teaches schemathesis to send `application/x-tar` bodies.
        cmd.current_dir(&work)
            .env("PYTHONPATH", root().join("xtask"))
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .arg("--config-file")
            .arg(root().join("xtask/schemathesis.toml"))
            .arg("run")
            .arg(format!("http://{}/swagger.json", server.addr))
            .args(["--max-examples", MAX_EXAMPLES])
            // One worker: hypothesis' lambda descriptions are not thread safe.
            .args(["--workers", "1"])
            .args(["--request-timeout", "30"])
            .arg("--no-color");
        eprintln!("$ {}", describe(&cmd));
        let t = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", describe(&cmd)))?;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if t.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "schemathesis did not finish within {} s",
                    DEADLINE.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("  (schemathesis took {:.1} s)", t.elapsed().as_secs_f64());
        if !status.success() {
            bail!("schemathesis failed ({status})");
        }
        drop(server);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&store);
    eprintln!(
        "schemathesis: {} in {:.1} s",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_address_is_read_from_a_log_line() {
        assert_eq!(
            bound_addr("INFO listening on http://127.0.0.1:41234 (plain)").as_deref(),
            Some("127.0.0.1:41234")
        );
        assert_eq!(bound_addr("--listen 127.0.0.1:0"), None);
    }
}
