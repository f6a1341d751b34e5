//! A private containerd for benchmarks: its own root, state and socket, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::util::{Server, need, wait_until};

/// A running containerd.
pub struct Containerd {
    /// The server process.
    _server: Server,
    /// Its socket.
    pub socket: PathBuf,
}

impl Containerd {
    /// Starts containerd with everything under `dir` (wiped first).
    pub fn start(dir: &Path) -> Result<Containerd> {
        need("containerd", "containerd")?;
        need("ctr", "containerd")?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n",
                dir.join("root").display(),
                dir.join("state").display(),
                socket.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let server = Server {
            name: "containerd".into(),
            child,
        };
        let s = socket.clone();
        wait_until("containerd", Duration::from_secs(30), || {
            Command::new("ctr")
                .arg("-a")
                .arg(&s)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success())
        })?;
        Ok(Containerd {
            _server: server,
            socket,
        })
    }

    /// `ctr -a SOCKET -n bench ...`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket).arg("-n").arg("bench");
        c
    }
}
