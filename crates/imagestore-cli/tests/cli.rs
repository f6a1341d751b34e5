//! The CLI verbs on the local backend, run as the built binary: every listed verb, its
//! errors (one line naming the id or path), completions, man pages, and the committed sample
//! image (import twice, export round trip, checkout).

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;

use imagestore_test_support as support;
use std::process::ExitCode;

use std::io::Read;

use common::{Env, chain_ids, layout_layers, sample_layout};
use sha2::Digest as _;

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

fn names(tar_bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            e.path()
                .expect("path")
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

fn content_of(tar_bytes: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().ok()? {
        let mut e = e.ok()?;
        if e.path().ok()?.to_string_lossy().trim_end_matches('/') == name {
            let mut v = Vec::new();
            e.read_to_end(&mut v).ok()?;
            return Some(v);
        }
    }
    None
}

fn every_verb_works_on_the_local_backend() {
    let env = Env::new();
    env.ok(&["store", "create", "s"]);
    assert_eq!(env.ok(&["store", "ls"]).trim(), "s");

    let l1 = tar_of(&[("etc/app.conf", b"v=1\n"), ("usr/bin/tool", b"#!/bin/sh\n")]);
    let l2 = tar_of(&[("etc/app.conf", b"v=2\n"), ("var/log/x", b"log\n")]);
    let (f1, f2) = (env.path("l1.tar"), env.path("l2.tar"));
    std::fs::write(&f1, &l1).expect("write");
    std::fs::write(&f2, &l2).expect("write");
    let s1 = sha(&l1);
    env.ok(&[
        "image",
        "write",
        "--store",
        "s",
        "--parent",
        "scratch",
        "--id",
        "base",
        "--sum",
        &s1,
        f1.to_str().expect("utf8"),
    ]);
    // From standard input.
    let out = env.run_with(
        &[
            "image",
            "write",
            "--store",
            "s",
            "--parent",
            "base",
            "--id",
            "top",
            "--sum",
            &sha(&l2),
            "--meta",
            "k=v",
            "-",
        ],
        Some(&l2),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = env.json(&["image", "info", "--store", "s", "top"]);
    assert_eq!(info["parent"], "base");
    assert_eq!(info["metadata"]["k"], "v");

    // export: the merged image to stdout.
    let out = env.run_with(&["export", "--store", "s", "top"], None);
    assert!(out.status.success());
    assert_eq!(
        content_of(&out.stdout, "etc/app.conf").as_deref(),
        Some(&b"v=2\n"[..])
    );
    assert!(names(&out.stdout).contains(&"usr/bin/tool".to_owned()));
    // --ancestor: only the changes.
    let out = env.run_with(
        &["export", "--store", "s", "top", "--ancestor", "base"],
        None,
    );
    let n = names(&out.stdout);
    assert!(
        n.contains(&"var/log/x".to_owned()) && !n.contains(&"usr/bin/tool".to_owned()),
        "{n:?}"
    );
    // --raw: the original bytes; -o FILE.
    let raw = env.path("raw.tar");
    env.ok(&[
        "export",
        "--store",
        "s",
        "top",
        "--raw",
        "-o",
        raw.to_str().expect("utf8"),
    ]);
    assert_eq!(std::fs::read(&raw).expect("raw"), l2);
    // --headers-only.
    let out = env.run_with(&["export", "--store", "s", "top", "--headers-only"], None);
    assert_eq!(
        content_of(&out.stdout, "etc/app.conf").as_deref(),
        Some(&b""[..])
    );
    // --include / --exclude / --rebase / --strip.
    let out = env.run_with(
        &[
            "export",
            "--store",
            "s",
            "top",
            "--include",
            "etc",
            "--rebase",
            "root",
        ],
        None,
    );
    let n = names(&out.stdout);
    assert!(n.contains(&"root/etc/app.conf".to_owned()), "{n:?}");
    assert!(!n.iter().any(|p| p.contains("usr/bin")), "{n:?}");
    let out = env.run_with(&["export", "--store", "s", "top", "--exclude", "var"], None);
    assert!(!names(&out.stdout).iter().any(|p| p.starts_with("var/log")));
    let out = env.run_with(
        &[
            "export",
            "--store",
            "s",
            "top",
            "--include",
            "usr/bin",
            "--strip",
            "usr",
        ],
        None,
    );
    assert!(
        names(&out.stdout).contains(&"bin/tool".to_owned()),
        "{:?}",
        names(&out.stdout)
    );

    // checkout --rootless.
    let dest = env.path("co");
    env.ok(&[
        "checkout",
        "--store",
        "s",
        "top",
        dest.to_str().expect("utf8"),
        "--rootless",
    ]);
    assert_eq!(
        std::fs::read(dest.join("etc/app.conf")).expect("file"),
        b"v=2\n"
    );

    // writable create, import (file and stdin), commit.
    env.ok(&[
        "writable", "create", "--store", "s", "--parent", "top", "--id", "w1",
    ]);
    let l3 = tar_of(&[("etc/new", b"new\n"), ("etc/.wh.app.conf", b"")]);
    let f3 = env.path("l3.tar");
    std::fs::write(&f3, &l3).expect("write");
    env.ok(&["import", "--store", "s", "w1", f3.to_str().expect("utf8")]);
    let out = env.run_with(
        &["import", "--store", "s", "w1", "-"],
        Some(&tar_of(&[("etc/more", b"m\n")])),
    );
    assert!(out.status.success());
    let committed = env.json(&["writable", "commit", "--store", "s", "w1", "--id", "c1"]);
    assert_eq!(committed["parent"], "top");
    let out = env.run_with(&["export", "--store", "s", "c1"], None);
    let n = names(&out.stdout);
    assert!(n.contains(&"etc/new".to_owned()) && n.contains(&"etc/more".to_owned()));
    assert!(
        !n.contains(&"etc/app.conf".to_owned()),
        "whiteout applied: {n:?}"
    );

    // owners: acquire, ls, delete refused, release.
    env.ok(&["owner", "acquire", "--store", "s", "c1", "container-1"]);
    assert_eq!(
        env.ok(&["owner", "ls", "--store", "s", "c1"]).trim(),
        "container-1"
    );
    let e = env.fails(&["image", "rm", "--store", "s", "c1"]);
    assert!(e.contains("c1") && e.contains("owner container-1"), "{e}");
    env.ok(&["owner", "release", "--store", "s", "c1", "container-1"]);
    assert_eq!(env.ok(&["owner", "ls", "--store", "s", "c1"]).trim(), "");
    // A lease: renewed, then left to expire.
    env.ok(&[
        "owner", "acquire", "--store", "s", "c1", "job-1", "--ttl", "1s",
    ]);
    let renewed = env.json(&[
        "owner", "renew", "--store", "s", "c1", "job-1", "--ttl", "2s",
    ]);
    assert_eq!(renewed["ttl_s"], 2);
    assert_eq!(
        env.ok(&["owner", "ls", "--store", "s", "c1"]).trim(),
        "job-1"
    );
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert_eq!(env.ok(&["owner", "ls", "--store", "s", "c1"]).trim(), "");
    env.ok(&["image", "rm", "--store", "s", "c1"]);

    // rm --branch: top and its parents that nothing else uses, up to --keep.
    let gone = env.json(&[
        "image", "rm", "--store", "s", "top", "--branch", "--keep", "base",
    ]);
    let ids: Vec<&str> = gone
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["top"]);
    assert_eq!(
        env.ok(&["image", "rm", "--store", "s", "base", "--branch"])
            .trim(),
        "deleted /storage/s/base"
    );
    assert_eq!(
        env.json(&["image", "ls", "--store", "s"]),
        serde_json::json!([])
    );
}

fn errors_are_one_line_naming_what_failed() {
    let env = Env::new();
    env.ok(&["store", "create", "s"]);
    let e = env.fails(&["image", "info", "--store", "s", "nope"]);
    assert!(e.contains("\"s/nope\"") && e.contains("not found"), "{e}");
    let e = env.fails(&[
        "checkout",
        "--store",
        "s",
        "nope",
        "/tmp/x-imagestore-never",
    ]);
    assert!(e.contains("nope"), "{e}");
    let e = env.fails(&["oci", "import", "--store", "s", "/definitely/not/here.tar"]);
    assert!(e.contains("/definitely/not/here.tar"), "{e}");
    let bogus = env.path("bogus.tar");
    std::fs::write(&bogus, tar_of(&[("hello", b"x")])).expect("write");
    let e = env.fails(&[
        "oci",
        "import",
        "--store",
        "s",
        bogus.to_str().expect("utf8"),
    ]);
    assert!(
        e.contains("bogus.tar") && e.contains("not an OCI layout"),
        "{e}"
    );
    let e = env.fails(&[
        "image",
        "write",
        "--store",
        "s",
        "--parent",
        "scratch",
        "--id",
        "x",
        "--sum",
        "sha256:00",
        "-",
    ]);
    assert!(e.contains("sha256:00"), "{e}");
    // A typo'd scheme lists the available ones.
    let out = common::run_cmd(
        {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imagestore"));
            c.args(["--url", "flie:///tmp/x", "store", "ls"]);
            c
        },
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let e = common::one_line(&out.stderr);
    assert!(
        e.contains("unknown scheme \"flie\"") && e.contains("available schemes: file"),
        "{e}"
    );
    // Bad usage is exit code 2.
    let out = env.run_with(&["store", "frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));
    // The store given positionally, as the oci verbs once took it, is bad usage naming --store.
    let out = env.run_with(&["oci", "import", "s", "/tmp/imagestore-nowhere"], None);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--store"), "{e}");
}

fn completions_and_man_pages_are_generated() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = env.ok(&["completions", shell]);
        assert!(out.contains("imagestore"), "{shell}");
        assert!(out.contains("checkout"), "{shell}: subcommands listed");
    }
    let man = env.ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH imagestore"),
        "{man}"
    );
    let dir = env.path("man");
    env.ok(&["man", "--dir", dir.to_str().expect("utf8")]);
    for page in [
        "imagestore.1",
        "imagestore-oci-import.1",
        "imagestore-oci-pull.1",
        "imagestore-oci-push.1",
        "imagestore-ref-ls.1",
        "imagestore-gc.1",
        "imagestore-store-quota.1",
        "imagestore-checkout.1",
        "imagestore-serve.1",
    ] {
        assert!(dir.join(page).is_file(), "{page} missing");
    }
    // The oci pages show the store as the option every other verb takes.
    for page in [
        "imagestore-oci-import.1",
        "imagestore-oci-pull.1",
        "imagestore-oci-push.1",
        "imagestore-ref-ls.1",
        "imagestore-gc.1",
        "imagestore-oci-export.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).expect("read");
        assert!(text.contains("\\-\\-store"), "{page}: {text}");
    }
    // And bash completes --store for them.
    let bash = env.ok(&["completions", "bash"]);
    for verb in ["import", "pull", "push", "export"] {
        let case = format!("imagestore__subcmd__oci__subcmd__{verb})");
        let opts = bash
            .split(&case)
            .nth(1)
            .and_then(|rest| rest.lines().find(|l| l.trim_start().starts_with("opts=")))
            .unwrap_or_default();
        assert!(opts.contains(" --store "), "oci {verb}: {opts:?}");
    }
}

fn version_names_the_commit_and_the_backends_compiled_in() {
    let env = Env::new();
    let long = env.ok(&["--version"]);
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&concat!("imagestore ", env!("CARGO_PKG_VERSION"))),
        "{long}"
    );
    // A test build is not a release build: no commit is claimed.
    assert!(
        lines.contains(&"commit: unknown (not built by `cargo xtask dist`)"),
        "{long}"
    );
    let backends = lines
        .iter()
        .find_map(|l| l.strip_prefix("backends: "))
        .unwrap_or_default();
    for scheme in ["file", "vmdk", "vsphere", "imagestore+http"] {
        assert!(backends.split(", ").any(|b| b == scheme), "{long}");
    }
    let short = env.ok(&["-V"]);
    assert_eq!(
        short.trim(),
        concat!(
            "imagestore ",
            env!("CARGO_PKG_VERSION"),
            " (commit unknown)"
        )
    );
    // The man page carries the same version.
    assert!(env.ok(&["man"]).contains(env!("CARGO_PKG_VERSION")));
}

fn the_sample_image_imports_into_the_default_store_twice_and_round_trips() {
    let env = Env::new();
    let sample = sample_layout();
    let sample_s = sample.to_str().expect("utf8");
    // The README's first command: no --url, the default store in the data directory.
    let first = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imagestore"));
        c.env_remove("IMAGESTORE_URL")
            .env("XDG_DATA_HOME", env.path("data"))
            .args(args);
        common::run_cmd(c, None)
    };
    let out = first(&["sample"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 layer(s) written, 0 already stored"),
        "{text}"
    );
    assert!(
        text.contains("chain of sample/") && text.contains("store usage:"),
        "{text}"
    );
    assert!(env.path("data/imagestore/stores/sample").is_dir());
    let out = first(&["oci", "import", "--store", "sample", sample_s]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 layer(s) written, 3 already stored"));

    // Same again with --json in a store of our own.
    let v = env.json(&["oci", "import", "--store", "s", sample_s]);
    assert_eq!(v["result"]["written"], 3);
    let ids = chain_ids(&v);
    assert_eq!(ids.len(), 3);
    let top = v["result"]["top"].as_str().expect("top").to_owned();
    assert_eq!(ids.last(), Some(&top));
    let again = env.json(&["oci", "import", "--store", "s", sample_s]);
    assert_eq!(
        (
            again["result"]["written"].clone(),
            again["result"]["skipped"].clone()
        ),
        (0.into(), 3.into())
    );
    assert_eq!(chain_ids(&again), ids);

    // Export: the same layer digests and config as the committed layout.
    let out = env.path("exported");
    let ex = env.json(&[
        "oci",
        "export",
        "--store",
        "s",
        &top,
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(ex["config_preserved"], true);
    assert_eq!(
        layout_layers(&out, "latest"),
        layout_layers(&sample, "latest")
    );
    // By unique id prefix and to an archive.
    let archive = env.path("sample.tar");
    env.ok(&[
        "oci",
        "export",
        "--store",
        "s",
        &top[..12],
        "--archive",
        archive.to_str().expect("utf8"),
    ]);
    let v2 = env.json(&[
        "oci",
        "import",
        "--store",
        "s2",
        archive.to_str().expect("utf8"),
    ]);
    assert_eq!(chain_ids(&v2), ids);

    // Checkout: busybox from layer 1, tzdata from layer 2, the whiteouts of layer 3 applied.
    let co = env.path("rootfs");
    env.ok(&[
        "checkout",
        "--store",
        "s",
        &top,
        co.to_str().expect("utf8"),
        "--rootless",
    ]);
    assert!(co.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(co.join("bin/sh"))
            .expect("sh")
            .to_string_lossy(),
        "busybox"
    );
    assert!(co.join("usr/share/zoneinfo/Europe/Paris").exists());
    assert!(!co.join("usr/share/zoneinfo/right").exists());
    assert!(!co.join("usr/share/doc/tzdata/changelog.Debian.gz").exists());
    assert!(co.join("etc/os-release").exists() || co.join("usr/lib/os-release").exists());
}

fn a_vmdk_store_exports_images_as_one_disk() {
    let mut env = Env::new();
    env.url = format!(
        "vmdk://{}?capacity_kib=1048576",
        env.path("datastore").display()
    );
    env.ok(&["store", "create", "s"]);
    let layer = tar_of(&[("etc/app.conf", b"v=1\n")]);
    let out = env.run_with(
        &[
            "image",
            "write",
            "--store",
            "s",
            "--parent",
            "scratch",
            "--id",
            "app",
            "--sum",
            &sha(&layer),
            "-",
        ],
        Some(&layer),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run_with(&["export", "--store", "s", "app"], None);
    assert_eq!(
        content_of(&out.stdout, "etc/app.conf").as_deref(),
        Some(&b"v=1\n"[..])
    );
    // The layer's bytes are not kept: --raw is refused with one line; --vmdk gives a disk.
    let line = env.fails(&["export", "--store", "s", "app", "--raw"]);
    assert!(line.contains("not supported"), "{line}");
    let disk = env.path("app.vmdk");
    env.ok(&[
        "export",
        "--store",
        "s",
        "app",
        "--vmdk",
        "-o",
        disk.to_str().expect("utf8"),
    ]);
    let disk = disk.to_str().expect("utf8");
    let info = common::tool("qemu-img", &["info", "--output=json", disk]);
    assert!(info.contains("streamOptimized"), "{info}");
    common::tool("qemu-img", &["check", disk]);
    let raw = env.path("app.raw");
    common::tool(
        "qemu-img",
        &["convert", "-O", "raw", disk, raw.to_str().expect("utf8")],
    );
    let cat = common::tool(
        "debugfs",
        &["-R", "cat /etc/app.conf", raw.to_str().expect("utf8")],
    );
    assert_eq!(cat, "v=1\n");
}

/// Runs the binary with `--url url` and `args` in `cwd`, returning its exit code and stderr.
fn run_at(cwd: &std::path::Path, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imagestore"));
    c.current_dir(cwd).arg("--url").arg(url).args(args);
    let out = common::run_cmd(c, None);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn a_relative_file_url_is_refused_with_the_absolute_one_to_write() {
    let env = Env::new();
    for url in ["file:relative", "file:./relative"] {
        let (code, e) = run_at(env.dir.path(), url, &["store", "create", "s"]);
        assert_eq!(code, Some(1), "{e}");
        let abs = env.dir.path().join("relative");
        assert!(
            e.contains("not an absolute file URL") && e.contains("file:///"),
            "{e}"
        );
        assert!(
            e.contains(&env.dir.path().display().to_string()),
            "suggests the absolute path {}: {e}",
            abs.display()
        );
        assert!(!abs.exists(), "nothing is created for {url}");
    }
    assert!(
        !std::path::Path::new("/relative").exists(),
        "file:relative must not become /relative"
    );
}

fn read_only_commands_create_nothing() {
    let env = Env::new();
    let root = env.path("store");
    // On a root that does not exist: an empty listing, or "not found" for a named store.
    assert_eq!(env.json(&["store", "ls"]), serde_json::json!([]));
    for args in [
        &["image", "ls", "--store", "s"][..],
        &["image", "info", "--store", "s", "scratch"],
        &["store", "usage", "s"],
        &["owner", "ls", "--store", "s", "scratch"],
        &["export", "--store", "s", "scratch"],
    ] {
        let e = env.fails(args);
        assert!(
            e.contains("\"s\"") && e.contains("not found"),
            "{args:?}: {e}"
        );
    }
    assert!(
        !root.exists(),
        "a read-only command created {}",
        root.display()
    );
    // The first writing command makes the root.
    env.ok(&["store", "create", "s"]);
    assert!(root.join("imagestore-local.json").is_file());
    assert_eq!(
        env.json(&["image", "info", "--store", "s", "scratch"])["id"],
        "scratch"
    );
}

fn a_url_naming_a_file_is_one_clear_error() {
    let env = Env::new();
    let file = env.path("plain-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let url = format!("file://{}", file.display());
    for args in [&["store", "ls"][..], &["store", "create", "s"]] {
        let (code, e) = run_at(env.dir.path(), &url, args);
        assert_eq!(code, Some(1), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("is a file, not a directory"), "{e}");
        assert!(!e.contains("File exists"), "{e}");
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"not a directory");
}

fn an_io_error_names_its_cause_once() {
    let env = Env::new();
    env.ok(&["store", "create", "s"]);
    // The store's image directory cannot be listed when it is a file.
    let images = env.path("store/stores/s/images");
    std::fs::remove_dir_all(&images).expect("remove images");
    std::fs::write(&images, b"x").expect("write");
    let e = env.fails(&["image", "ls", "--store", "s"]);
    let cause = "Not a directory (os error 20)";
    assert_eq!(e.matches(cause).count(), 1, "{e}");
}

/// A secret put in a store URL (userinfo, secret-looking or unknown query parameters) never
/// reaches stdout or stderr, through any verb's error path, with trace logging on.
fn secrets_in_store_urls_never_show() {
    let env = Env::new();
    let m = "Sekr1tMarker";
    let urls = [
        format!("file://user:{m}@localhost/tmp/x"),
        format!("file:///tmp/x?token={m}"),
        format!("s3://user:{m}@bucket/p"),
        format!("s3://bucket/p?endpoint=http://127.0.0.1:9&secret_access_key={m}"),
        format!("s3://bucket/p?endpoint=http://u:{m}@127.0.0.1:9"),
        format!("vmdk:///tmp/x?password={m}"),
        format!("vmdk:///tmp/x?unknown={m}"),
        format!("vsphere://user:{m}@127.0.0.1:9/dc/ds/f"),
        format!("vsphere://127.0.0.1:9/dc/ds/f?session={m}"),
        format!("imagestore+http://user:{m}@127.0.0.1:9"),
        format!("imagestore+https://127.0.0.1:9?token={m}"),
    ];
    let sum = format!("sha256:{}", "0".repeat(64));
    // Every verb, with arguments that parse (the URL is used before anything else).
    let lines = [
        "store create s",
        "store ls",
        "store rm s",
        "store usage s",
        "image write --store s --parent scratch --id x --sum SUM /dev/null",
        "image ls --store s",
        "image info --store s x",
        "image rm --store s x",
        "export --store s x",
        "checkout --store s x /tmp/imagestore-nowhere",
        "writable create --store s --parent scratch --id w",
        "writable commit --store s w --id n",
        "writable rm --store s w",
        "import --store s w /dev/null",
        "owner acquire --store s x o",
        "owner release --store s x o",
        "owner ls --store s x",
        "oci import --store s /tmp/imagestore-nowhere",
        "oci pull --store s localhost:1/x:y",
        "oci export --store s x --archive /tmp/imagestore-nowhere.tar",
        "sample",
    ];
    let verbs: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| {
            l.split(' ')
                .map(|w| if w == "SUM" { sum.as_str() } else { w })
                .collect()
        })
        .collect();
    for url in &urls {
        for verb in &verbs {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imagestore"));
            c.current_dir(env.dir.path())
                .env("IMAGESTORE_LOG", "trace")
                .arg("--url")
                .arg(url)
                .args(verb);
            let out = common::run_cmd(c, None);
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // 1: the command ran and failed (2 would be a usage error, before the URL is used).
            assert_eq!(out.status.code(), Some(1), "{url} {verb:?}: {all}");
            assert!(!all.contains(m), "{url} {verb:?}: {all}");
        }
    }
}

/// `serve --listen 127.0.0.1:0` prints the address it bound, answers `/healthz` there, and
/// exits 0 on SIGTERM.
fn serve_answers_health_checks_and_stops_on_sigterm() {
    use std::io::{BufRead, Write};
    let env = Env::new();
    let url = format!("file://{}", env.path("store").display());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imagestore"))
        .args(["--url", &url, "serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        conn,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

fn main() -> ExitCode {
    let mut trials = support::plain_trials![
        every_verb_works_on_the_local_backend,
        errors_are_one_line_naming_what_failed,
        completions_and_man_pages_are_generated,
        version_names_the_commit_and_the_backends_compiled_in,
        the_sample_image_imports_into_the_default_store_twice_and_round_trips,
        a_relative_file_url_is_refused_with_the_absolute_one_to_write,
        read_only_commands_create_nothing,
        a_url_naming_a_file_is_one_clear_error,
        an_io_error_names_its_cause_once,
        secrets_in_store_urls_never_show,
        serve_answers_health_checks_and_stops_on_sigterm,
    ];
    trials.push(support::trial(
        "a_vmdk_store_exports_images_as_one_disk",
        support::programs(&["debugfs", "qemu-img"]),
        |()| a_vmdk_store_exports_images_as_one_disk(),
    ));
    support::run(trials)
}
