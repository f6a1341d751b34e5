//! Helpers for tests that run the built `imagestore` binary.

#![allow(dead_code)]

pub mod registry;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The committed sample image.
pub fn sample_layout() -> PathBuf {
    workspace().join("samples/debian-mini")
}

/// A scratch directory with a local store URL in it.
pub struct Env {
    /// The directory (removed on drop).
    pub dir: TempDir,
    /// `file://<dir>/store`.
    pub url: String,
}

impl Env {
    /// A fresh environment.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("store").display());
        Env { dir, url }
    }

    /// A path inside the scratch directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `imagestore --url <url>` with a private data home.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_imagestore"));
        c.arg("--url")
            .arg(&self.url)
            .env_remove("IMAGESTORE_URL")
            .env_remove("IMAGESTORE_REGISTRY_PASSWORD")
            .env_remove("IMAGESTORE_REGISTRY_USERNAME")
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .stdin(Stdio::null());
        c
    }

    /// Runs with `args`, feeding `stdin`, and returns the output whatever the status.
    pub fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = self.cmd();
        c.args(args);
        run_cmd(c, stdin)
    }

    /// Runs with `args`; panics (with stderr) unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run_with(args, None);
        assert!(
            out.status.success(),
            "imagestore {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs with `args` and `--json`; parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Runs with `args`, expects exit code 1, and returns the one line on stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run_with(args, None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "imagestore {args:?} should fail with 1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        one_line(&out.stderr)
    }
}

/// Runs a command, feeding `stdin`.
pub fn run_cmd(mut c: Command, stdin: Option<&[u8]>) -> Output {
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    if let Some(input) = stdin
        && let Some(mut i) = child.stdin.take()
    {
        i.write_all(input).expect("stdin");
    }
    child.wait_with_output().expect("wait")
}

/// Asserts stderr is exactly one line and returns it.
pub fn one_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr).into_owned();
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {s}");
    assert!(lines[0].starts_with("imagestore: "), "{s}");
    lines[0].to_owned()
}

/// Runs an external tool; panics with its output unless it succeeds.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The layer digests of the manifest tagged `tag` in an OCI layout.
pub fn layout_layers(layout: &Path, tag: &str) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("index json");
    let digest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .expect("tagged manifest")
        .to_owned();
    let (alg, hex) = digest.split_once(':').expect("digest");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs").join(alg).join(hex)).expect("manifest"),
    )
    .expect("manifest json");
    manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["digest"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The ids of a chain as `oci import --json` prints it, base first, scratch excluded.
pub fn chain_ids(v: &serde_json::Value) -> Vec<String> {
    v["chain"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["id"] != "scratch")
        .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}
