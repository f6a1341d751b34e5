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
    // The manifest and config are blobs of the store, named by the references.
    let refs = env.json(&["ref", "ls", "--store", "b"]);
    let names: Vec<&str> = refs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["docker.io/test/rootfs:latest", "latest"]);
    for r in refs.as_array().into_iter().flatten() {
        assert_eq!(r["image"], ids[2].as_str());
    }
    let info = env.json(&["image", "info", "--store", "b", &ids[2]]);
    assert!(info["metadata"].get("oci.config").is_none());
    assert!(info["metadata"].get("oci.ref").is_none());
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
    // By id: the layout names the image by its id; by reference: by the reference's tag.
    let ex = env.json(&["oci", "export", "--store", "s", &top, s(&env.path("by-id"))]);
    assert_eq!(ex["config_preserved"], true);
    let ex = env.json(&["oci", "export", "--store", "s", "latest", s(&out)]);
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

/// Asserts that our checkout `ours` holds what umoci unpacked into `theirs` (besides the
/// store's scratch skeleton), and returns our tree.
fn assert_same_tree(ours: &Path, theirs: &Path) -> BTreeMap<String, Node> {
    let (theirs_tree, theirs_links) = walk(theirs);
    let (ours_tree, ours_links) = walk(ours);
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
    ours_tree
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

    let ours_tree = assert_same_tree(&ours, &bundle.join("rootfs"));
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

/// The digest and bytes of the manifest tagged `tag` in an OCI layout, and its config's.
fn layout_manifest(layout: &Path, tag: &str) -> (String, Vec<u8>, Vec<u8>) {
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
    let blob = |d: &str| {
        let (alg, hex) = d.split_once(':').expect("digest");
        std::fs::read(layout.join("blobs").join(alg).join(hex)).expect("blob")
    };
    let manifest = blob(&digest);
    let m: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest json");
    let config = blob(m["config"]["digest"].as_str().expect("config digest"));
    (digest, manifest, config)
}

/// A copy of the sample layout whose index names its image twice, as `latest` and `v1`.
fn two_tag_layout(env: &Env) -> PathBuf {
    let dir = env.path("two-tags");
    tool("cp", &["-r", s(&sample_layout()), s(&dir)]);
    let path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("index")).expect("json");
    let manifests = index["manifests"].as_array_mut().expect("manifests");
    let mut second = manifests[0].clone();
    second["annotations"]["org.opencontainers.image.ref.name"] = "v1".into();
    manifests.push(second);
    std::fs::write(&path, serde_json::to_vec(&index).expect("json")).expect("write index");
    dir
}

fn two_tags_of_one_image_are_two_references_and_export_gives_back_the_manifest() {
    let env = Env::new();
    let layout = two_tag_layout(&env);
    let v = env.json(&["oci", "import", "--store", "s", s(&layout)]);
    assert_eq!(
        v["result"]["references"],
        serde_json::json!(["latest", "v1"])
    );
    let top = v["result"]["top"].as_str().expect("top").to_owned();
    let refs = env.json(&["ref", "ls", "--store", "s"]);
    let refs = refs.as_array().expect("refs");
    assert_eq!(refs.len(), 2);
    let (digest, manifest, config) = layout_manifest(&layout, "latest");
    for r in refs {
        assert_eq!(r["image"], top.as_str());
        assert_eq!(r["manifest"], digest.as_str());
        assert_eq!(r["platform"], "linux/amd64");
    }
    // Importing again moves both references onto the same image: both survive.
    let again = env.json(&["oci", "import", "--store", "s", s(&layout), "--tag", "v1"]);
    assert_eq!(again["result"]["references"], serde_json::json!(["v1"]));
    assert_eq!(
        env.json(&["ref", "ls", "--store", "s"])
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // Exported by either reference: the original manifest and config, byte for byte, and
    // the original layers.
    for tag in ["v1", "latest"] {
        let out = env.path(&format!("out-{tag}"));
        let ex = env.json(&["oci", "export", "--store", "s", tag, s(&out)]);
        assert_eq!(ex["reference"], tag);
        assert_eq!(ex["tag"], tag);
        assert_eq!(ex["manifest_preserved"], true);
        assert_eq!(ex["config_preserved"], true);
        let (d, m, c) = layout_manifest(&out, tag);
        assert_eq!(d, digest, "{tag}");
        assert_eq!(m, manifest, "{tag}");
        assert_eq!(c, config, "{tag}");
        assert_eq!(layout_layers(&out, tag), layout_layers(&layout, "latest"));
    }
    // By id, the image's first reference gives its manifest back too.
    let out = env.path("out-id");
    let ex = env.json(&["oci", "export", "--store", "s", &top, s(&out)]);
    assert_eq!(ex["manifest"]["digest"], digest.as_str());
    assert_eq!(ex["tag"], "latest");
    // A referenced image is in use.
    let e = env.fails(&["image", "rm", "--store", "s", &top]);
    assert!(e.contains("reference"), "{e}");
}

fn a_docker_archive_with_two_repo_tags_sets_both_references() {
    let env = Env::new();
    let archive = env.path("two.tar");
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--additional-tag",
            "example.com/app:two",
            &format!("oci:{}:latest", s(&sample_layout())),
            &format!("docker-archive:{}:example.com/app:one", s(&archive)),
        ],
    );
    let v = env.json(&["oci", "import", "--store", "s", s(&archive)]);
    let mut names: Vec<String> = v["result"]["references"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names, ["example.com/app:one", "example.com/app:two"]);
    let refs = env.json(&["ref", "ls", "--store", "s"]);
    let refs = refs.as_array().expect("refs");
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0]["manifest"], refs[1]["manifest"]);
    assert_eq!(refs[0]["image"], refs[1]["image"]);
    // Exported by a unique suffix of its name, with the manifest and config stored at import.
    let out = env.path("out");
    let ex = env.json(&["oci", "export", "--store", "s", "app:two", s(&out)]);
    assert_eq!(ex["reference"], "example.com/app:two");
    assert_eq!(ex["tag"], "two");
    assert_eq!(ex["manifest_preserved"], true);
    assert_eq!(ex["manifest"]["digest"], refs[1]["manifest"]);
    assert_eq!(
        format!("{}", ex["config"]["digest"]),
        format!("{}", refs[1]["config"])
    );
}

/// `skopeo inspect` of `docker://REF` on a plain-HTTP registry.
fn inspect(reference: &str) -> serde_json::Value {
    serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ))
    .expect("inspect json")
}

fn transfers(v: &serde_json::Value) -> Vec<String> {
    v["result"]["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["transfer"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn push_mounts_within_a_registry_uploads_to_another_and_keeps_every_digest() {
    let sample = sample_layout();
    let (digest, _, _) = layout_manifest(&sample, "latest");
    let layers = layout_layers(&sample, "latest");
    let reg = Registry::start(None);
    reg.push(&sample, "latest", "src/sample", None);
    let env = Env::new();
    let source = format!("{}/src/sample:latest", reg.host());
    let pulled = env.json(&["oci", "pull", "--store", "p", &source, "--insecure"]);
    assert_eq!(pulled["result"]["references"], serde_json::json!([source]));

    // Another repository of the same registry: every blob is mounted.
    let mounted = format!("{}/dst/mounted:v1", reg.host());
    let v = env.json(&[
        "oci",
        "push",
        "--store",
        "p",
        &source,
        &mounted,
        "--insecure",
    ]);
    assert_eq!(transfers(&v), ["mounted"; 3]);
    assert_eq!(v["result"]["config"]["transfer"], "mounted");
    assert_eq!(v["result"]["bytes_uploaded"], 0);
    assert_eq!(v["result"]["manifest_digest"], digest.as_str());

    // A second registry: uploaded, in chunks above a lowered threshold, with progress.
    let reg2 = Registry::start(None);
    let uploaded = format!("{}/other/up:v2", reg2.host());
    let out = env.run_with(
        &[
            "--json",
            "--progress",
            "json",
            "oci",
            "push",
            "--store",
            "p",
            "src/sample:latest",
            &uploaded,
            "--insecure",
            "--chunk-threshold",
            "100000",
            "--chunk-size",
            "300000",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let sizes: Vec<u64> = v["result"]["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["size"].as_u64().unwrap_or_default())
        .collect();
    let expected: Vec<&str> = sizes
        .iter()
        .map(|s| if *s > 100_000 { "chunked" } else { "uploaded" })
        .collect();
    assert!(expected.contains(&"chunked") && sizes.iter().any(|s| *s > 300_000));
    assert_eq!(transfers(&v), expected);
    assert_eq!(v["result"]["config"]["transfer"], "uploaded");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "advance" && e["phase"] == "upload")
    );
    // Pushed again: everything is there already.
    let v = env.json(&[
        "oci",
        "push",
        "--store",
        "p",
        "src/sample:latest",
        &uploaded,
        "--insecure",
    ]);
    assert_eq!(transfers(&v), ["present"; 3]);

    // Both hold the original manifest and layers.
    for dest in [&mounted, &uploaded] {
        let i = inspect(dest);
        assert_eq!(i["Digest"], digest.as_str(), "{dest}");
        assert_eq!(i["Layers"], serde_json::json!(layers), "{dest}");
    }
    // An image imported from a layout has no registry to mount from: uploaded.
    env.json(&["oci", "import", "--store", "p", s(&sample)]);
    let from_layout = format!("{}/dst/from-layout:v3", reg.host());
    let v = env.json(&[
        "oci",
        "push",
        "--store",
        "p",
        "latest",
        &from_layout,
        "--insecure",
    ]);
    assert_eq!(transfers(&v), ["uploaded"; 3]);
    assert_eq!(inspect(&from_layout)["Digest"], digest.as_str());

    // What umoci unpacks from the pushed image is what we check out of the reference.
    let copy = env.path("copy");
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{uploaded}"),
            &format!("oci:{}:pushed", s(&copy)),
        ],
    );
    let bundle = env.path("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:pushed", s(&copy)),
            s(&bundle),
        ],
    );
    let ours = env.path("ours");
    env.json(&[
        "checkout",
        "--store",
        "p",
        "src/sample:latest",
        s(&ours),
        "--rootless",
    ]);
    let tree = assert_same_tree(&ours, &bundle.join("rootfs"));
    assert!(tree.len() > 10, "{}", tree.len());

    // A reference the store does not hold, and a registry that refuses the push, are one
    // line each.
    let e = env.fails(&[
        "oci",
        "push",
        "--store",
        "p",
        "nope:1",
        &uploaded,
        "--insecure",
    ]);
    assert!(e.contains("no reference \"nope:1\""), "{e}");
}

fn push_with_basic_auth_never_prints_the_password() {
    let password = "pw-Push-77-secret";
    let reg = Registry::start(Some(("alice", password)));
    let env = Env::new();
    env.json(&["oci", "import", "--store", "s", s(&sample_layout())]);
    let dest = format!("{}/pushed/sample:latest", reg.host());
    let e = env.fails(&["oci", "push", "--store", "s", "latest", &dest, "--insecure"]);
    assert!(
        e.contains("authentication failed") && e.contains("--username"),
        "{e}"
    );
    let out = env.run_with(
        &[
            "--json",
            "--progress",
            "json",
            "oci",
            "push",
            "--store",
            "s",
            "latest",
            &dest,
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
    for stream in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains(password));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(transfers(&v), ["uploaded"; 3]);
    // Pulled back by another store: the same chain.
    let mut c = env.cmd();
    c.args([
        "--json",
        "oci",
        "pull",
        "--store",
        "t",
        &dest,
        "--insecure",
        "--username",
        "alice",
    ])
    .env("IMAGESTORE_REGISTRY_PASSWORD", password);
    let out = common::run_cmd(c, None);
    assert!(out.status.success());
    let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        pulled["result"]["manifest_digest"],
        v["result"]["manifest_digest"]
    );
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
        support::trial(
            "two_tags_of_one_image_are_two_references_and_export_gives_back_the_manifest",
            Ok(()),
            |()| two_tags_of_one_image_are_two_references_and_export_gives_back_the_manifest(),
        ),
        support::trial(
            "a_docker_archive_with_two_repo_tags_sets_both_references",
            support::programs(&["skopeo"]),
            |()| a_docker_archive_with_two_repo_tags_sets_both_references(),
        ),
        support::trial(
            "push_mounts_within_a_registry_uploads_to_another_and_keeps_every_digest",
            support::programs(&["skopeo", "docker-registry", "umoci"]),
            |()| push_mounts_within_a_registry_uploads_to_another_and_keeps_every_digest(),
        ),
        support::trial(
            "push_with_basic_auth_never_prints_the_password",
            support::programs(&["skopeo", "docker-registry"]),
            |()| push_with_basic_auth_never_prints_the_password(),
        ),
    ])
}
