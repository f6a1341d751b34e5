//! vcsim, govmomi's vCenter simulator, as the test server of the `vsphere://` backend: built
//! from Debian's `golang-go` and `golang-github-vmware-govmomi-dev` with the Go main kept in
//! `xtask/vcsim/` (GOPATH mode: module mode would need the network), started on loopback with
//! a login of its own, and stopped by PID (SIGTERM, so it removes its datastore folder).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{have, root, run, work_dir};

/// The environment variable naming the simulator's `vsphere://` base URL for the tests.
pub const URL_VAR: &str = "IMAGESTORE_TEST_VSPHERE";
/// The environment variable naming the local folder behind the simulator's datastore.
pub const DIR_VAR: &str = "IMAGESTORE_TEST_VSPHERE_DIR";
/// The login the simulator accepts (and nothing else).
pub const USER: &str = "imagestore";
/// See [`USER`].
pub const PASSWORD: &str = "imagestore-test-password";

/// Where Debian's govmomi sources are.
const GOPATH: &str = "/usr/share/gocode";

/// How to install what the simulator needs, for messages.
pub const INSTALL_HINT: &str =
    "apt-get install -y golang-go golang-github-vmware-govmomi-dev (what .ci/run does)";

/// True when the simulator can be built here.
pub fn available() -> bool {
    have("go")
        && std::path::Path::new(GOPATH)
            .join("src/github.com/vmware/govmomi/simulator")
            .is_dir()
}

/// Builds the simulator (again only when its source is newer than the binary).
pub fn build() -> Result<PathBuf> {
    if !available() {
        bail!("vcsim cannot be built here; install: {INSTALL_HINT}");
    }
    let dir = work_dir("vcsim")?;
    let bin = dir.join("vcsim");
    let src = root().join("xtask/vcsim/main.go");
    let fresh = |p: &std::path::Path| p.metadata().and_then(|m| m.modified()).ok();
    if fresh(&bin).is_some() && fresh(&bin) >= fresh(&src) {
        return Ok(bin);
    }
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(root().join("xtask/vcsim"))
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("go-cache")))
    .context("building vcsim")?;
    Ok(bin)
}

/// A running simulator.
pub struct Vcsim {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    /// `vsphere://127.0.0.1:PORT/DC0/LocalDS_0`.
    pub url: String,
    /// The local folder behind the datastore.
    pub dir: PathBuf,
}

impl Vcsim {
    /// Builds and starts the simulator on a free loopback port.
    pub fn start() -> Result<Vcsim> {
        let bin = build()?;
        let log = work_dir("vcsim")?.join("vcsim.log");
        let mut child = Command::new(&bin)
            .args([
                "-l",
                "127.0.0.1:0",
                "-username",
                USER,
                "-password",
                PASSWORD,
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting vcsim")?;
        let stdout = child.stdout.take().context("vcsim's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // The ready line comes on stdout; read it on a thread so a hung start times out.
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let n = r.read_line(&mut line);
            let _ = tx.send(n.map(|_| line));
            r
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(l)) if !l.trim().is_empty() => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("vcsim did not start ({other:?}); see {}", log.display());
            }
        };
        let stdout = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the vcsim reader panicked"))?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("vcsim's ready line {line:?}"))?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .with_context(|| format!("vcsim's ready line has no {k}: {line}"))
        };
        let sdk = field("url")?;
        let host_port = sdk
            .strip_prefix("http://")
            .and_then(|r| r.strip_suffix("/sdk"))
            .with_context(|| format!("vcsim's SOAP URL {sdk:?} is not http://HOST:PORT/sdk"))?;
        let url = format!(
            "vsphere://{host_port}/{}/{}",
            field("datacenter")?,
            field("datastore")?
        );
        let dir = PathBuf::from(field("datastore_dir")?);
        eprintln!("vcsim: {url} (datastore folder {})", dir.display());
        Ok(Vcsim {
            child,
            _stdout: stdout,
            url,
            dir,
        })
    }

    /// Sets what the tests need on `cmd`: the simulator's URL, its datastore folder, the login.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env(URL_VAR, &self.url)
            .env(DIR_VAR, &self.dir)
            .env("IMAGESTORE_VSPHERE_USER", USER)
            .env("IMAGESTORE_VSPHERE_PASSWORD", PASSWORD);
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let pid = self.child.id();
        let cpu = crate::util::Process(pid).cpu_text();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                eprintln!("stopped vcsim (pid {pid}, {cpu} CPU-seconds)");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("killed vcsim (pid {pid}, {cpu} CPU-seconds)");
    }
}
