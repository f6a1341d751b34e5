//! A CycloneDX 1.5 SBOM (JSON) of what the released binary is built from: the packages of
//! `cargo tree` for the CLI with its release features on the build's target (normal
//! dependencies only: no build scripts' or tests' dependencies), with licence, the checksum of
//! `Cargo.lock` and the dependency edges of `cargo metadata`. Nothing in it depends on where
//! the sources are; its time stamp is `SOURCE_DATE_EPOCH`, and it names the toolchain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::{cargo, output};

/// A package as name and version.
type Key = (String, String);

fn purl((name, version): &Key) -> String {
    format!("pkg:cargo/{name}@{version}")
}

/// The packages of the binary's graph, from `cargo tree`.
fn tree(root: &Path, package: &str, features: &str, target: &str) -> Result<BTreeSet<Key>> {
    let text = output(cargo().current_dir(root).args([
        "tree",
        "--locked",
        "-p",
        package,
        "--features",
        features,
        "--target",
        target,
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]))?;
    let mut set = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            bail!("unexpected `cargo tree` line {line:?}");
        };
        let Some(version) = version.strip_prefix('v') else {
            bail!("unexpected `cargo tree` line {line:?}");
        };
        set.insert((name.to_string(), version.to_string()));
    }
    Ok(set)
}

/// `checksum` of each registry package in `Cargo.lock`.
fn lock_checksums(lock: &str) -> BTreeMap<Key, String> {
    let mut out = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .trim_start()
                    .strip_prefix('=')?
                    .trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')
                    .map(str::to_string)
            })
        };
        if let (Some(n), Some(v), Some(c)) = (field("name"), field("version"), field("checksum")) {
            out.insert((n, v), c);
        }
    }
    out
}

/// `1970-01-01T00:00:00Z` for a count of seconds since the epoch.
pub fn rfc3339(secs: u64) -> Result<String> {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .with_context(|| format!("{secs} s after the epoch is out of range"))?;
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The SBOM of `package` built with `features` for `target`, from the sources at `root`.
pub fn cyclonedx(
    root: &Path,
    package: &str,
    features: &str,
    target: &str,
    epoch: u64,
) -> Result<Vec<u8>> {
    let wanted = tree(root, package, features, target)?;
    // The toolchain is what a rebuild needs besides the commit to get the same bytes.
    let rustc = output(std::process::Command::new("rustc").arg("-V"))?;
    let meta: Value = serde_json::from_str(&output(cargo().current_dir(root).args([
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--filter-platform",
        target,
        "--features",
        &format!("{package}/{features}"),
    ]))?)
    .context("parsing `cargo metadata`")?;
    let lock_path = root.join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path)
        .with_context(|| format!("reading {}", lock_path.display()))?;
    let sums = lock_checksums(&lock);

    let empty = Vec::new();
    let mut by_id: BTreeMap<&str, Key> = BTreeMap::new();
    let mut components = Vec::new();
    let mut root_component = None;
    for p in meta["packages"].as_array().unwrap_or(&empty) {
        let (Some(id), Some(name), Some(version)) =
            (p["id"].as_str(), p["name"].as_str(), p["version"].as_str())
        else {
            bail!("`cargo metadata` lists a package without id, name or version");
        };
        let key = (name.to_string(), version.to_string());
        if !wanted.contains(&key) {
            continue;
        }
        by_id.insert(id, key.clone());
        let mut c = json!({
            "type": "library",
            "bom-ref": purl(&key),
            "name": name,
            "version": version,
            "purl": purl(&key),
        });
        if let Some(d) = p["description"].as_str() {
            c["description"] = json!(d.trim());
        }
        if let Some(l) = p["license"].as_str() {
            c["licenses"] = json!([{ "expression": l }]);
        }
        if let Some(sum) = sums.get(&key) {
            c["hashes"] = json!([{ "alg": "SHA-256", "content": sum }]);
        }
        if let Some(r) = p["repository"].as_str() {
            c["externalReferences"] = json!([{ "type": "vcs", "url": r }]);
        }
        if name == package {
            c["type"] = json!("application");
            root_component = Some(c);
        } else {
            components.push(c);
        }
    }
    let Some(root_component) = root_component else {
        bail!("{package} is not in `cargo metadata`");
    };
    if components.len() + 1 != wanted.len() {
        bail!(
            "`cargo tree` names {} packages, `cargo metadata` describes {}",
            wanted.len(),
            components.len() + 1
        );
    }
    components.sort_by(|a, b| a["bom-ref"].as_str().cmp(&b["bom-ref"].as_str()));

    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap_or(&empty) {
        let Some(from) = node["id"].as_str().and_then(|id| by_id.get(id)) else {
            continue;
        };
        let entry = edges.entry(purl(from)).or_default();
        for d in node["deps"].as_array().unwrap_or(&empty) {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .any(|k| k["kind"].is_null());
            if let (true, Some(to)) = (normal, d["pkg"].as_str().and_then(|id| by_id.get(id))) {
                entry.insert(purl(to));
            }
        }
    }
    let dependencies: Vec<Value> = edges
        .into_iter()
        .map(|(from, to)| json!({ "ref": from, "dependsOn": to }))
        .collect();

    let bom = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(epoch)?,
            "component": root_component,
            "properties": [
                { "name": "cargo:features", "value": features },
                { "name": "cargo:target", "value": target },
                { "name": "cargo:profile", "value": super::compile::PROFILE },
                { "name": "rustc:version", "value": rustc.trim() },
            ],
        },
        "components": components,
        "dependencies": dependencies,
    });
    let mut out = serde_json::to_vec_pretty(&bom).context("writing the SBOM")?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599).unwrap(), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn checksums_of_registry_packages_only() {
        let lock = "version = 4\n\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"registry+x\"\nchecksum = \"ab\"\n\n[[package]]\nname = \"local\"\nversion = \"0.1.0\"\n";
        let sums = lock_checksums(lock);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[&("a".into(), "1.0.0".into())], "ab");
    }
}
