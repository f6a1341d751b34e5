//! OCI interop against real tools: the Debian fixture (`cargo xtask fixture debian`) imported
//! from its three forms, exported and read back by skopeo and umoci, and pulled from Debian's
//! `docker-registry` (anonymous, htpasswd Basic auth, Bearer tokens through a proxy that cuts
//! a download halfway).
//!
//! Outside CI a missing tool or fixture skips a test with a message; under `CI=true` it fails.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;

use imagestore_test_support as support;
use std::process::ExitCode;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use common::registry::{Proxy, Registry};
use common::{Env, chain_ids, layout_layers, sample_layout, tool};
use sha2::Digest as _;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn the_three_forms_import_to_the_same_chain_and_reimport_is_a_no_op(fx: PathBuf) {
    let env = Env::new();
    let from_docker = env.json(&["oci", "import", "--store", "a", s(&fx.join("docker.tar"))]);
    assert_eq!(from_docker["result"]["written"], 3);
    assert_eq!(
        from_docker["result"]["reference"],
        "docker.io/test/rootfs:latest"
    );
    let ids = chain_ids(&from_docker);
    assert_eq!(ids.len(), 3);

    let from_layout = env.json(&[
        "oci",
        "import",
        "--store",
        "b",
        s(&fx.join("oci")),
        "--tag",
        "latest",
    ]);
    assert_eq!(chain_ids(&from_layout), ids);
    assert_eq!(from_layout["result"]["written"], 3);
    // Into the same store, the archive forms write nothing.
    for form in ["oci.tar", "docker.tar"] {
        let v = env.json(&["oci", "import", "--store", "b", s(&fx.join(form))]);
        assert_eq!(chain_ids(&v), ids, "{form}");
        assert_eq!(v["result"]["written"], 0, "{form}");
        assert_eq!(v["result"]["skipped"], 3, "{form}");
    }
    let from_archive = env.json(&["oci", "import", "--store", "c", s(&fx.join("oci.tar"))]);
    assert_eq!(chain_ids(&from_archive), ids);
    // The layout's manifest digest and config are kept.
    assert_eq!(
        from_layout["result"]["manifest_digest"],
        from_archive["result"]["manifest_digest"]
    );
    let info = env.json(&["image", "info", "--store", "b", &ids[2]]);
    assert!(
        info["metadata"]["oci.config"]
            .as_str()
            .is_some_and(|c| c.contains("diff_ids"))
    );
    assert_eq!(info["metadata"]["oci.ref"], "latest");
    assert_eq!(
        info["metadata"]["oci.diff_id"]
            .as_str()
            .map(|d| d.starts_with("sha256:")),
        Some(true)
    );
    // The base image's id is its diff id (an OCI chain id).
    let base = env.json(&["image", "info", "--store", "b", &ids[0]]);
    assert_eq!(
        base["metadata"]["oci.diff_id"],
        format!("sha256:{}", ids[0])
    );
}

fn exports_are_accepted_by_skopeo_and_keep_layer_digests(fx: PathBuf) {
    let env = Env::new();
    let v = env.json(&["oci", "import", "--store", "s", s(&fx.join("oci"))]);
    let top = v["result"]["top"].as_str().expect("top").to_owned();
    let out = env.path("layout");
    let ex = env.json(&["oci", "export", "--store", "s", &top, s(&out)]);
    assert_eq!(ex["config_preserved"], true);
    assert_eq!(
        layout_layers(&out, "latest"),
        layout_layers(&fx.join("oci"), "latest")
    );
    // The manifest is the same as the original too (same config, same layers).
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "--insecure-policy",
            "inspect",
            &format!("oci:{}:latest", s(&out)),
        ],
    ))
    .expect("inspect json");
    let original: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "--insecure-policy",
            "inspect",
            &format!("oci:{}:latest", s(&fx.join("oci"))),
        ],
    ))
    .expect("inspect json");
    assert_eq!(inspect["Layers"], original["Layers"]);
    assert_eq!(inspect["Digest"], original["Digest"]);
    // skopeo copies it (verifying every blob) to another layout and to a docker-archive.
    let copy = env.path("copy");
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            &format!("oci:{}:latest", s(&out)),
            &format!("oci:{}:copied", s(&copy)),
        ],
    );
    assert_eq!(
        layout_layers(&copy, "copied"),
        layout_layers(&out, "latest")
    );
    // An oci-archive export.
    let archive = env.path("img.tar");
    env.ok(&[
        "oci",
        "export",
        "--store",
        "s",
        &top,
        "--archive",
        s(&archive),
        "--tag",
        "v1",
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "--insecure-policy",
            "inspect",
            &format!("oci-archive:{}:v1", s(&archive)),
        ],
    ))
    .expect("inspect json");
    assert_eq!(inspect["Layers"], original["Layers"]);
    let dock = env.path("d.tar");
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            &format!("oci-archive:{}:v1", s(&archive)),
            &format!("docker-archive:{}:x/y:z", s(&dock)),
        ],
    );

    // Imported from the docker-archive (uncompressed layers), exported: the same digests
    // as the archive's layers.
    let v = env.json(&["oci", "import", "--store", "d", s(&fx.join("docker.tar"))]);
    let top_d = v["result"]["top"].as_str().expect("top").to_owned();
    assert_eq!(top_d, top);
    let out_d = env.path("layout-d");
    env.ok(&["oci", "export", "--store", "d", &top_d, s(&out_d)]);
    let diff_ids: Vec<String> = {
        let manifest: serde_json::Value = serde_json::from_str(&tool(
            "tar",
            &["-xOf", s(&fx.join("docker.tar")), "manifest.json"],
        ))
        .expect("json");
        manifest[0]["Layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "sha256:{}",
                    l.as_str().unwrap_or("").trim_end_matches(".tar")
                )
            })
            .collect()
    };
    assert_eq!(layout_layers(&out_d, "latest"), diff_ids);
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "inspect",
            &format!("oci:{}:latest", s(&out_d)),
        ],
    );
}

/// What a tree holds, for comparing two unpacked images.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, String),
    Link(String),
    Other(u32, u32),
}

fn walk(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p: PathBuf = e.expect("entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let mode = m.permissions().mode() & 0o7777;
            let node = if m.file_type().is_symlink() {
                Node::Link(
                    std::fs::read_link(&p)
                        .expect("readlink")
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                Node::Dir(mode)
            } else if m.is_file() {
                if m.nlink() > 1 {
                    inodes
                        .entry((m.dev(), m.ino()))
                        .or_default()
                        .push(rel.clone());
                }
                let bytes = std::fs::read(&p).expect("read");
                Node::File(mode, format!("{:x}", sha2::Sha256::digest(&bytes)))
            } else {
                Node::Other(mode, m.mode() & 0o170000)
            };
            out.insert(rel, node);
        }
    }
    let groups = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    (out, groups)
}

fn umoci_unpack_of_an_export_equals_our_checkout(fx: PathBuf) {
    let env = Env::new();
    let v = env.json(&["oci", "import", "--store", "s", s(&fx.join("docker.tar"))]);
    let top = v["result"]["top"].as_str().expect("top").to_owned();
    let layout = env.path("layout");
    env.ok(&["oci", "export", "--store", "s", &top, s(&layout)]);
    let bundle = env.path("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", s(&layout)),
            s(&bundle),
        ],
    );
    let ours = env.path("ours");
    let report = env.json(&["checkout", "--store", "s", &top, s(&ours), "--rootless"]);

    let (theirs_tree, theirs_links) = walk(&bundle.join("rootfs"));
    let (ours_tree, ours_links) = walk(&ours);
    // Our checkout also holds the store's scratch skeleton (VIC's /.tether, /etc/hostname, ...)
    // where the image does not replace it; umoci knows nothing of it. Device nodes are skipped
    // by both in rootless mode (we list them in the report).
    let skeleton: BTreeSet<String> = imagestore::layer::scratch::SKELETON
        .iter()
        .map(|(p, ..)| p.trim_end_matches('/').to_owned())
        .collect();
    let mut differences = Vec::new();
    for (path, node) in &ours_tree {
        match theirs_tree.get(path) {
            Some(t) if t == node => {}
            Some(t) => differences.push(format!("{path}: ours {node:?}, umoci {t:?}")),
            None if skeleton.contains(path) => {}
            None => differences.push(format!("{path}: only in ours ({node:?})")),
        }
    }
    for (path, node) in &theirs_tree {
        if !ours_tree.contains_key(path) {
            differences.push(format!("{path}: only in umoci's ({node:?})"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences, first: {:#?}",
        differences.len(),
        &differences[..differences.len().min(20)]
    );
    assert_eq!(ours_links, theirs_links, "hardlink groups");
    assert!(
        !ours_tree.contains_key("etc/motd"),
        "the whiteout layer deletes /etc/motd"
    );
    assert!(ours_tree.contains_key("etc/layer2.txt"));
    assert!(
        ours_tree.len() > 5000,
        "a whole Debian tree: {}",
        ours_tree.len()
    );
    assert!(
        report["skipped"].as_array().is_some_and(|s| !s.is_empty()),
        "rootless skips devices and owners"
    );
}

fn a_pull_from_the_registry_gives_the_same_chain_as_an_import(fx: PathBuf) {
    let reg = Registry::start(None);
    reg.push(&fx.join("oci"), "latest", "test/rootfs", None);
    let env = Env::new();
    let imported = env.json(&["oci", "import", "--store", "i", s(&fx.join("oci"))]);
    let reference = format!("{}/test/rootfs:latest", reg.host());
    let pulled = env.json(&["oci", "pull", "--store", "p", &reference, "--insecure"]);
    assert_eq!(chain_ids(&pulled), chain_ids(&imported));
    assert_eq!(pulled["result"]["written"], 3);
    assert_eq!(
        pulled["result"]["manifest_digest"],
        imported["result"]["manifest_digest"]
    );
    // Pulling again, or into the store the import filled, writes nothing.
    for store in ["p", "i"] {
        let again = env.json(&["oci", "pull", "--store", store, &reference, "--insecure"]);
        assert_eq!(again["result"]["written"], 0, "{store}");
        assert_eq!(chain_ids(&again), chain_ids(&imported));
    }
    // By digest too.
    let by_digest = format!(
        "{}/test/rootfs@{}",
        reg.host(),
        imported["result"]["manifest_digest"]
            .as_str()
            .expect("digest")
    );
    env.json(&[
        "oci",
        "pull",
        "--store",
        "q",
        &by_digest,
        "--insecure",
        "--concurrency",
        "1",
    ]);
    // A missing tag is one line naming it.
    let e = env.fails(&[
        "oci",
        "pull",
        "--store",
        "p",
        &format!("{}/test/rootfs:nope", reg.host()),
        "--insecure",
    ]);
    assert!(
        e.contains("manifest nope not found") && e.contains("test/rootfs"),
        "{e}"
    );
}

fn basic_auth_credentials_are_used_and_never_printed() {
    let password = "pw-Zq81-secret";
    let reg = Registry::start(Some(("alice", password)));
    reg.push(
        &sample_layout(),
        "latest",
        "sample",
        Some(("alice", password)),
    );
    let env = Env::new();
    let reference = format!("{}/sample:latest", reg.host());
    let e = env.fails(&["oci", "pull", "--store", "s", &reference, "--insecure"]);
    assert!(
        e.contains("authentication failed") && e.contains("--username"),
        "{e}"
    );
    let out = env.run_with(
        &[
            "oci",
            "pull",
            "--store",
            "s",
            &reference,
            "--insecure",
            "--username",
            "alice",
            "--password-stdin",
        ],
        Some(b"wrong\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let e = common::one_line(&out.stderr);
    assert!(e.contains("authentication failed"), "{e}");
    let out = env.run_with(
        &[
            "--json",
            "oci",
            "pull",
            "--store",
            "s",
            &reference,
            "--insecure",
            "--username",
            "alice",
            "--password-stdin",
        ],
        Some(format!("{password}\n").as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"]["written"], 3);
    // The password from the environment works too, and never shows up anywhere.
    let mut c = env.cmd();
    c.args([
        "--progress",
        "json",
        "oci",
        "pull",
        "--store",
        "t",
        &reference,
        "--insecure",
        "--username",
        "alice",
    ])
    .env("IMAGESTORE_REGISTRY_PASSWORD", password);
    let out = common::run_cmd(c, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stream in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains(password));
    }
    let imported = env.json(&["oci", "import", "--store", "u", s(&sample_layout())]);
    assert_eq!(chain_ids(&v), chain_ids(&imported));
}

fn token_auth_and_an_interrupted_download_is_resumed() {
    let reg = Registry::start(None);
    reg.push(&sample_layout(), "latest", "sample", None);
    let proxy = Proxy::start(reg.port, "bob", "tok-pass");
    let env = Env::new();
    let reference = format!("{}/sample:latest", proxy.host());
    let e = env.fails(&["oci", "pull", "--store", "s", &reference, "--insecure"]);
    assert!(
        e.contains("authentication failed") && e.contains("token endpoint"),
        "{e}"
    );
    let out = env.run_with(
        &[
            "--json",
            "--progress",
            "json",
            "oci",
            "pull",
            "--store",
            "s",
            &reference,
            "--insecure",
            "--username",
            "bob",
            "--password-stdin",
        ],
        Some(b"tok-pass\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"]["written"], 3);
    let st = &proxy.state;
    assert_eq!(st.cuts.load(Ordering::SeqCst), 1, "one download was cut");
    assert!(st.tokens.load(Ordering::SeqCst) >= 1);
    assert!(st.challenged.load(Ordering::SeqCst) >= 1);
    let ranges = st.ranges.lock().expect("lock").clone();
    assert_eq!(
        ranges.len(),
        1,
        "the cut download resumed with a Range request: {ranges:?}"
    );
    assert!(
        ranges[0].starts_with("bytes=") && ranges[0].ends_with('-') && ranges[0] != "bytes=0-",
        "{ranges:?}"
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["event"] == "retry"),
        "a retry event"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "finish" && e["phase"] == "download")
    );
    let imported = env.json(&["oci", "import", "--store", "u", s(&sample_layout())]);
    assert_eq!(chain_ids(&v), chain_ids(&imported));
}

fn main() -> ExitCode {
    support::run(vec![
        support::trial(
            "the_three_forms_import_to_the_same_chain_and_reimport_is_a_no_op",
            support::debian_fixture(),
            the_three_forms_import_to_the_same_chain_and_reimport_is_a_no_op,
        ),
        support::trial(
            "exports_are_accepted_by_skopeo_and_keep_layer_digests",
            support::both(support::debian_fixture(), support::programs(&["skopeo"])),
            |(fx, ())| exports_are_accepted_by_skopeo_and_keep_layer_digests(fx),
        ),
        support::trial(
            "umoci_unpack_of_an_export_equals_our_checkout",
            support::both(support::debian_fixture(), support::programs(&["umoci"])),
            |(fx, ())| umoci_unpack_of_an_export_equals_our_checkout(fx),
        ),
        support::trial(
            "a_pull_from_the_registry_gives_the_same_chain_as_an_import",
            support::both(
                support::debian_fixture(),
                support::programs(&["skopeo", "docker-registry"]),
            ),
            |(fx, ())| a_pull_from_the_registry_gives_the_same_chain_as_an_import(fx),
        ),
        support::trial(
            "basic_auth_credentials_are_used_and_never_printed",
            support::programs(&["skopeo", "docker-registry"]),
            |()| basic_auth_credentials_are_used_and_never_printed(),
        ),
        support::trial(
            "token_auth_and_an_interrupted_download_is_resumed",
            support::programs(&["skopeo", "docker-registry"]),
            |()| token_auth_and_an_interrupted_download_is_resumed(),
        ),
    ])
}
