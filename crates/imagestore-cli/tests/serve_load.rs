//! `imagestore serve` as a real process under load, and several servers over one bucket.
//!
//! * `load_64_clients`: 64 concurrent clients for `IMAGESTORE_LOAD_SECS` seconds (60 by
//!   default) mix writes (VIC's WriteImage), reads, exports, raw layer downloads, lists,
//!   deletes and uploads cut off mid-body against one server over `file://`. No answer may be
//!   a 5xx; at the end every image is whole (its raw layer hashes to its sum, its export
//!   reads to the end), no image names a missing parent, an id whose upload was cut is
//!   writable again, the usage is exactly the sum of the images' sizes, and the server's peak
//!   RSS stays bounded.
//! * `three_servers_one_bucket`: three `serve` processes over one SeaweedFS bucket, clients
//!   spread across them: writes of one new id with different contents through all three leave
//!   exactly one winner (the others get `409 Conflict`); a delete of a parent racing a child
//!   write through other servers never leaves the child without its parent.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use imagestore_test_support as support;
use serde_json::Value;
use sha2::Digest as _;

/// Concurrent clients of the load test.
const CLIENTS: usize = 64;
/// Peak RSS the server may reach under load, MiB.
const MAX_RSS_MIB: f64 = 256.0;

/// A `serve` process, killed when dropped.
struct Serve {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Starts `imagestore --url URL serve` on a free loopback port and waits for `/healthz`.
    fn start(url: &str) -> Result<Serve> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_imagestore"))
            .args(["--url", url, "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env_remove("IMAGESTORE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log"))?)
            .spawn()
            .context("starting imagestore serve")?;
        let s = Serve {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(200) = probe::status(&s.base(), "/healthz") {
                return Ok(s);
            }
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "imagestore serve did not answer /healthz: {}",
                std::fs::read_to_string(s._dir.path().join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's peak resident set, MiB.
    fn peak_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmHWM")?
            .parse()?;
        Ok(kib / 1024.0)
    }
}

/// A tiny probe without a client library: the status of `GET path`, or an I/O error.
mod probe {
    pub fn status(base: &str, path: &str) -> std::io::Result<u16> {
        use std::io::{BufRead, BufReader, Write};
        let addr = base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
    }
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A one-file tar of `size` bytes derived from `seed`.
fn layer(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let data: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, format!("f/{seed:x}"), data.as_slice())
        .expect("append");
    b.into_inner().expect("tar")
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    server_errors: AtomicU64,
    cut_uploads: AtomicU64,
}

/// An HTTP client over one server.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    tally: Arc<Tally>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Client {
    fn new(base: String) -> Client {
        imagestore_core::tls::install_crypto_provider();
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            base,
            tally: Arc::default(),
            errors: Arc::default(),
        }
    }

    /// Sends a request; a 5xx or a transport error is recorded as a failure.
    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Option<(u16, Vec<u8>)> {
        self.tally.requests.fetch_add(1, Ordering::Relaxed);
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = match r.bytes().await {
                    Ok(b) => b.to_vec(),
                    Err(e) => {
                        self.fail(format!("{what}: reading the body: {e}"));
                        return None;
                    }
                };
                if status >= 500 {
                    self.tally.server_errors.fetch_add(1, Ordering::Relaxed);
                    self.fail(format!(
                        "{what}: {status} {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                Some((status, body))
            }
            Err(e) => {
                self.fail(format!("{what}: {e}"));
                None
            }
        }
    }

    fn fail(&self, msg: String) {
        if let Ok(mut v) = self.errors.lock()
            && v.len() < 20
        {
            v.push(msg);
        }
    }

    /// VIC's WriteImage.
    async fn write(&self, store: &str, id: &str, parent: &str, body: Vec<u8>) -> Option<u16> {
        let url = format!(
            "{}/storage/{store}?image_id={id}&parent_id={parent}&sum={}",
            self.base,
            sha(&body)
        );
        let req = self
            .http
            .post(url)
            .header("Content-Type", "application/octet-stream")
            .body(body);
        self.send("write", req).await.map(|(s, _)| s)
    }

    /// The native API's write (no metadata).
    async fn native_write(
        &self,
        store: &str,
        id: &str,
        parent: &str,
        body: Vec<u8>,
    ) -> Option<u16> {
        let url = format!(
            "{}/v1/stores/{store}/images/{id}?parent={parent}&sum={}",
            self.base,
            sha(&body)
        );
        let mut framed = b"{}".to_vec();
        framed.extend_from_slice(&body);
        let req = self
            .http
            .put(url)
            .header("Imagestore-Metadata-Length", "2")
            .body(framed);
        self.send("native write", req).await.map(|(s, _)| s)
    }

    /// Starts a WriteImage of `body` and disconnects after half of it.
    fn cut_write(&self, store: &str, id: &str, body: &[u8]) -> Result<()> {
        let addr = self.base.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr)?;
        write!(
            s,
            "POST /storage/{store}?image_id={id}&parent_id=scratch&sum={} HTTP/1.1\r\n\
             Host: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            sha(body),
            body.len()
        )?;
        s.write_all(&body[..body.len() / 2])?;
        s.flush()?;
        drop(s);
        self.tally.cut_uploads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One client's loop: its own images, in chains of at most four.
async fn worker(c: Client, n: usize, until: Instant) {
    let store = "load";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1).wrapping_mul(0x1000_0001));
    // (id, parent, depth)
    let mut mine: Vec<(String, String, u32)> = Vec::new();
    let mut seq = 0u64;
    while Instant::now() < until {
        let op = rng.below(20);
        match op {
            0..=5 => {
                seq += 1;
                let id = format!("w{n}-{seq}");
                let (parent, depth) = match mine.get(rng.below(mine.len() as u64 + 1) as usize) {
                    Some((p, _, d)) if *d < 4 => (p.clone(), d + 1),
                    _ => ("scratch".to_owned(), 1),
                };
                let body = layer(rng.next(), 1 + rng.below(48 << 10) as usize);
                if let Some(s) = c.write(store, &id, &parent, body).await {
                    if s == 201 {
                        mine.push((id, parent, depth));
                    } else {
                        c.fail(format!("write {id} on {parent}: {s}"));
                    }
                }
            }
            6 => {
                // An upload cut off mid-body, then the same id written whole.
                seq += 1;
                let id = format!("w{n}-{seq}");
                let body = layer(rng.next(), 64 << 10);
                let cc = c.clone();
                let (idc, bodyc) = (id.clone(), body.clone());
                let cut =
                    tokio::task::spawn_blocking(move || cc.cut_write(store, &idc, &bodyc)).await;
                if !matches!(cut, Ok(Ok(()))) {
                    c.fail(format!("cutting the upload of {id} failed"));
                    continue;
                }
                // The cut write may still be unwinding: retry briefly while the id is busy.
                let mut done = false;
                for _ in 0..50 {
                    match c.write(store, &id, "scratch", body.clone()).await {
                        Some(201) => {
                            done = true;
                            break;
                        }
                        Some(409) | Some(423) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => {
                            c.fail(format!("rewrite of cut {id}: {other:?}"));
                            break;
                        }
                    }
                }
                if done {
                    mine.push((id, "scratch".into(), 1));
                } else {
                    c.fail(format!(
                        "{id} was not writable again after its upload was cut"
                    ));
                }
            }
            7..=9 if !mine.is_empty() => {
                let (id, _, _) = &mine[rng.below(mine.len() as u64) as usize];
                let url = format!("{}/storage/{store}/info/{id}", c.base);
                match c.send("get", c.http.get(url)).await {
                    Some((200, _)) | None => {}
                    Some((s, _)) => c.fail(format!("get {id}: {s}")),
                }
            }
            10..=11 if !mine.is_empty() => {
                let (id, _, _) = &mine[rng.below(mine.len() as u64) as usize];
                let url = format!("{}/archive?store={store}&deviceID={id}&data=true", c.base);
                if let Some((s, body)) = c.send("export", c.http.get(url)).await {
                    if s != 200 {
                        c.fail(format!("export {id}: {s}"));
                    } else if let Err(e) = read_tar(&body) {
                        c.fail(format!("export {id}: {e}"));
                    }
                }
            }
            12..=13 if !mine.is_empty() => {
                let (id, _, _) = &mine[rng.below(mine.len() as u64) as usize];
                let url = format!("{}/v1/stores/{store}/images/{id}/layer", c.base);
                if let Some((s, _)) = c.send("layer", c.http.get(url)).await
                    && s != 200
                {
                    c.fail(format!("layer {id}: {s}"));
                }
            }
            14 => {
                let url = format!("{}/storage/{store}", c.base);
                if let Some((s, _)) = c.send("list", c.http.get(url)).await
                    && s != 200
                {
                    c.fail(format!("list: {s}"));
                }
            }
            15..=19 if !mine.is_empty() => {
                let i = rng.below(mine.len() as u64) as usize;
                let id = mine[i].0.clone();
                let has_child = mine.iter().any(|(_, p, _)| *p == id);
                let url = format!("{}/v1/stores/{store}/images/{id}", c.base);
                match c.send("delete", c.http.delete(url)).await {
                    Some((200, _)) if !has_child => {
                        mine.remove(i);
                    }
                    Some((423, _)) if has_child => {}
                    Some((s, b)) => c.fail(format!(
                        "delete {id} (children: {has_child}): {s} {}",
                        String::from_utf8_lossy(&b)
                    )),
                    None => {}
                }
            }
            _ => {}
        }
    }
}

/// Reads a tar to its end.
fn read_tar(bytes: &[u8]) -> Result<usize> {
    let mut a = tar::Archive::new(bytes);
    let mut n = 0;
    for e in a.entries()? {
        let mut e = e?;
        std::io::copy(&mut e, &mut std::io::sink())?;
        n += 1;
    }
    Ok(n)
}

/// Every image of `store` through the native API.
async fn images(c: &Client, store: &str) -> Result<Vec<Value>> {
    let r = c
        .http
        .get(format!("{}/v1/stores/{store}/images", c.base))
        .send()
        .await?;
    ensure!(r.status().is_success(), "listing: {}", r.status());
    Ok(serde_json::from_slice(&r.bytes().await?)?)
}

/// Checks the end state: no dangling parent, every image whole, usage exact.
async fn check_store(c: &Client, store: &str) -> Result<usize> {
    let all = images(c, store).await?;
    let ids: std::collections::HashSet<&str> =
        all.iter().filter_map(|i| i["id"].as_str()).collect();
    let mut sizes = 0u64;
    for img in &all {
        let id = img["id"].as_str().context("image without id")?;
        let parent = img["parent"].as_str().context("image without parent")?;
        ensure!(
            parent == "scratch" || ids.contains(parent),
            "image {id} names parent {parent}, which does not exist"
        );
        sizes += img["size"].as_u64().context("image without size")?;
        let sum = img["sum"].as_str().context("image without sum")?;
        let raw = c
            .http
            .get(format!("{}/v1/stores/{store}/images/{id}/layer", c.base))
            .send()
            .await?
            .bytes()
            .await?;
        ensure!(
            sha(&raw) == sum,
            "image {id}: its layer does not hash to {sum}"
        );
    }
    let usage: Value = c
        .http
        .get(format!("{}/v1/stores/{store}/usage", c.base))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        usage["usage"].as_u64() == Some(sizes),
        "usage {usage} differs from the images' sizes {sizes}"
    );
    Ok(all.len())
}

async fn load_64_clients() -> Result<()> {
    let root = tempfile::tempdir()?;
    let url = format!("file://{}", root.path().join("store").display());
    let server = Serve::start(&url)?;
    let c = Client::new(server.base());
    let r = c
        .http
        .post(format!("{}/storage", c.base))
        .json(&serde_json::json!({"name": "load"}))
        .send()
        .await?;
    ensure!(
        r.status().as_u16() == 201,
        "creating the store: {}",
        r.status()
    );
    let secs: u64 = std::env::var("IMAGESTORE_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(worker(c.clone(), n, until)))
        .collect();
    for t in tasks {
        t.await?;
    }
    let left = check_store(&c, "load").await?;
    let rss = server.peak_mib()?;
    eprintln!(
        "load: {} requests, {} cut uploads, {left} images left, server peak RSS {rss:.1} MiB",
        c.tally.requests.load(Ordering::Relaxed),
        c.tally.cut_uploads.load(Ordering::Relaxed)
    );
    let errors = c.errors.lock().map(|v| v.clone()).unwrap_or_default();
    ensure!(errors.is_empty(), "failures under load: {errors:#?}");
    ensure!(
        c.tally.server_errors.load(Ordering::Relaxed) == 0,
        "5xx answers"
    );
    ensure!(
        rss <= MAX_RSS_MIB,
        "server peak RSS {rss:.1} MiB > {MAX_RSS_MIB}"
    );
    Ok(())
}

async fn three_servers_one_bucket(base_url: String) -> Result<()> {
    let mut u = url::Url::parse(&base_url)?;
    u.set_path(&format!(
        "/serve-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    ));
    u.query_pairs_mut().append_pair("lease_ttl", "10s");
    let url = u.to_string();
    let servers = [
        Serve::start(&url)?,
        Serve::start(&url)?,
        Serve::start(&url)?,
    ];
    let clients: Vec<Client> = servers.iter().map(|s| Client::new(s.base())).collect();
    let r = clients[0]
        .http
        .post(format!("{}/storage", clients[0].base))
        .json(&serde_json::json!({"name": "shared"}))
        .send()
        .await?;
    ensure!(
        r.status().as_u16() == 201,
        "creating the store: {}",
        r.status()
    );
    let store = "shared";
    let rounds = 8;
    // Same new id, three contents, three servers: one winner.
    for round in 0..rounds {
        let id = format!("same-{round}");
        let mut tasks = Vec::new();
        for (k, c) in clients.iter().enumerate() {
            let (c, id) = (c.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let body = layer(round * 10 + k as u64 + 1, 4096);
                c.native_write(store, &id, "scratch", body).await
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await?);
        }
        let winners = statuses.iter().filter(|s| **s == Some(201)).count();
        let losers = statuses.iter().filter(|s| **s == Some(409)).count();
        ensure!(
            winners == 1 && losers == 2,
            "round {round}: statuses {statuses:?}, wanted one 201 and two 409"
        );
    }
    // Deletes racing child writes, through different servers.
    let (mut deleted, mut kept) = (0, 0);
    for round in 0..rounds {
        let parent = format!("p-{round}");
        let child = format!("c-{round}");
        let s = clients[0]
            .write(store, &parent, "scratch", layer(1000 + round, 2048))
            .await;
        ensure!(s == Some(201), "writing {parent}: {s:?}");
        let (cd, cw) = (clients[1].clone(), clients[2].clone());
        let p2 = parent.clone();
        let del = tokio::spawn(async move {
            let url = format!("{}/v1/stores/{store}/images/{p2}", cd.base);
            cd.send("delete", cd.http.delete(url)).await.map(|(s, _)| s)
        });
        let (p3, c3) = (parent.clone(), child.clone());
        let wr = tokio::spawn(async move {
            cw.native_write(store, &c3, &p3, layer(2000 + round, 2048))
                .await
        });
        let (d, w) = (del.await?, wr.await?);
        match (d, w) {
            (Some(200), Some(404)) => deleted += 1,
            (Some(423), Some(201)) => kept += 1,
            other => bail!("round {round}: delete and child write answered {other:?}"),
        }
    }
    eprintln!("races: {deleted} deletes won, {kept} child writes won");
    for c in &clients {
        check_store(c, store).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let seaweed = support::env(
        "IMAGESTORE_TEST_S3_SEAWEED",
        "start SeaweedFS with `cargo xtask conformance s3` or run `cargo xtask ci`",
    );
    support::run(vec![
        support::trial_async("load_64_clients", Ok(()), 4, |()| load_64_clients()),
        support::trial_async("three_servers_one_bucket", seaweed, 4, |url| {
            three_servers_one_bucket(url)
        }),
    ])
}
