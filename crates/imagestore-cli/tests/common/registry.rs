//! A private `docker-registry` (distribution 2.8) on 127.0.0.1, and a loopback proxy in front
//! of it that demands Bearer tokens from its own token endpoint and can cut a blob download
//! in the middle.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running registry, stopped (by PID) on drop.
pub struct Registry {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts `docker-registry serve`, with htpasswd auth if `user` is given.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = user {
            let hash = bcrypt::hash_with_result(p, 4)
                .expect("bcrypt")
                .format_for_version(bcrypt::Version::TwoY);
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{u}:{hash}\n")).expect("htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: imagestore-test\n    path: {}\n",
                file.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).expect("config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let reg = Registry { child, port, dir };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut first = String::new();
                if BufReader::new(s).read_line(&mut first).is_ok() && first.starts_with("HTTP/1.1")
                {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "docker-registry did not start: {}",
                std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `oci:LAYOUT:TAG` to `REPO:TAG` with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, creds: Option<(&str, &str)>) {
        let src = format!("oci:{}:{tag}", layout.display());
        let dst = format!("docker://{}/{repo}:{tag}", self.host());
        let mut args = vec![
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ];
        let c;
        if let Some((u, p)) = creds {
            c = format!("{u}:{p}");
            args.push("--dest-creds");
            args.push(&c);
        }
        args.push(&src);
        args.push(&dst);
        super::tool("skopeo", &args);
    }
}

/// What the proxy saw and does.
#[derive(Default)]
pub struct ProxyState {
    /// The registry behind it.
    pub upstream: u16,
    /// The proxy's own port (for its token realm).
    pub port: u16,
    /// Credentials the token endpoint accepts.
    pub user: (String, String),
    /// Cut the next blob response larger than 64 KiB halfway.
    pub cut_next_blob: AtomicBool,
    /// Responses cut.
    pub cuts: AtomicUsize,
    /// `Range` headers received.
    pub ranges: Mutex<Vec<String>>,
    /// Tokens handed out.
    pub tokens: AtomicUsize,
    /// Requests refused for want of a token.
    pub challenged: AtomicUsize,
}

const TOKEN: &str = "test-token-1f2e3d";

/// A proxy running on its own threads until the process ends.
pub struct Proxy {
    /// Its port.
    pub port: u16,
    /// What it saw.
    pub state: Arc<ProxyState>,
}

impl Proxy {
    /// Starts a token-authenticating, blob-cutting proxy in front of `upstream`.
    pub fn start(upstream: u16, user: &str, pass: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ProxyState {
            upstream,
            port,
            user: (user.to_owned(), pass.to_owned()),
            cut_next_blob: AtomicBool::new(true),
            ..ProxyState::default()
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &st);
                });
            }
        });
        Proxy { port, state }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn respond(
    c: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes())?;
    c.write_all(body)?;
    c.flush()
}

fn handle(mut c: TcpStream, st: &ProxyState) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(c.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));

    if path.starts_with("/token") {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", st.user.0, st.user.1))
        );
        if header("authorization").as_deref() == Some(want.as_str())
            && path.contains("scope=repository")
        {
            st.tokens.fetch_add(1, Ordering::SeqCst);
            return respond(
                &mut c,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                format!("{{\"token\":\"{TOKEN}\",\"expires_in\":300}}").as_bytes(),
            );
        }
        return respond(&mut c, "401 Unauthorized", &[], b"{}");
    }
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        st.challenged.fetch_add(1, Ordering::SeqCst);
        let challenge = format!(
            "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"test-registry\",scope=\"repository:sample:pull\"",
            st.port
        );
        return respond(
            &mut c,
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", challenge),
                ("Content-Type", "application/json".into()),
            ],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
    }
    let mut up = TcpStream::connect(("127.0.0.1", st.upstream))?;
    let mut fwd = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
        st.upstream
    );
    for k in ["accept", "range"] {
        if let Some(v) = header(k) {
            fwd.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    fwd.push_str("\r\n");
    if let Some(r) = header("range") {
        st.ranges.lock().expect("lock").push(r);
    }
    up.write_all(fwd.as_bytes())?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(resp.len());
    let is_ok = resp.starts_with(b"HTTP/1.1 200");
    let body_len = resp.len() - split;
    if method == "GET"
        && path.contains("/blobs/")
        && is_ok
        && body_len > 64 << 10
        && st.cut_next_blob.swap(false, Ordering::SeqCst)
    {
        st.cuts.fetch_add(1, Ordering::SeqCst);
        c.write_all(&resp[..split + body_len / 2])?;
        c.flush()?;
        let _ = c.shutdown(Shutdown::Both);
        return Ok(());
    }
    c.write_all(&resp)?;
    c.flush()
}
