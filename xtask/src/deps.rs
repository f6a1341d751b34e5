//! `cargo xtask unused-deps`: fails when a workspace crate declares a dependency its code never
//! names. The same test as `cargo machete` (a dependency is used if its crate name appears as a
//! path, `use`, macro or `extern crate` in the crate's Rust files), without installing it in
//! every CI run (decision 0017). A dependency that is only there for its features or a build
//! script is listed in `[package.metadata.unused-deps] ignored = [...]`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::root;

/// One declared dependency of a package.
struct Dep {
    /// The name the code uses (`-` as `_`, after a rename).
    ident: String,
    /// The name in the manifest.
    name: String,
    kind: String,
}

/// The crate's Rust files: every `.rs` below its directory, except other packages' folders.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name == "target" || p.join("Cargo.toml").exists() {
                continue;
            }
            rust_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// True if `text` names crate `ident` as code does.
fn names(text: &str, ident: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(ident) {
        let start = from + at;
        let end = start + ident.len();
        from = end;
        let before_ok = start == 0 || !is_ident_byte(bytes[start - 1]);
        if !before_ok {
            continue;
        }
        let rest = &text[end..];
        if rest.starts_with("::") || rest.starts_with('!') {
            return true;
        }
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line = text[line_start..start].trim();
        if (line.ends_with("use") || line.ends_with("extern crate"))
            && !rest.starts_with(|c: char| c == '_' || c.is_alphanumeric())
        {
            return true;
        }
    }
    false
}

fn is_ident_byte(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

/// Names in `[package.metadata.unused-deps] ignored`.
fn ignored(pkg: &Value) -> Vec<String> {
    pkg["metadata"]["unused-deps"]["ignored"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The unused dependencies of every workspace package, as `package: dependency (kind)`.
pub fn find_unused() -> Result<Vec<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let mut unused = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap_or_default());
        let dir = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut files = Vec::new();
        rust_files(&dir, &mut files)?;
        let texts: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        let skip = ignored(pkg);
        let deps = pkg["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let name = d["name"].as_str().unwrap_or_default().to_owned();
                let used_as = d["rename"].as_str().unwrap_or(&name).replace('-', "_");
                Dep {
                    ident: used_as,
                    name,
                    kind: d["kind"].as_str().unwrap_or("normal").to_owned(),
                }
            });
        for dep in deps {
            if skip.contains(&dep.name) || texts.iter().any(|t| names(t, &dep.ident)) {
                continue;
            }
            unused.push(format!(
                "{}: {} ({})",
                pkg["name"].as_str().unwrap_or_default(),
                dep.name,
                dep.kind
            ));
        }
    }
    Ok(unused)
}

/// Fails listing the unused dependencies, if any.
pub fn unused_deps() -> Result<()> {
    let unused = find_unused()?;
    if !unused.is_empty() {
        bail!(
            "dependencies no code uses (remove them, or list them under [package.metadata.unused-deps] ignored):\n  {}",
            unused.join("\n  ")
        );
    }
    eprintln!("unused-deps: every declared dependency is used");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn crate_names_count_only_where_code_names_a_crate() {
        assert!(names("use serde::Deserialize;", "serde"));
        assert!(names("let x = hex::encode(b);", "hex"));
        assert!(names("    anyhow!(\"x\")", "anyhow"));
        assert!(names("use tar;\n", "tar"));
        assert!(names("extern crate libc;", "libc"));
        assert!(!names("use serde_json::Value;", "serde"));
        assert!(!names("let tarball = 1;", "tar"));
        assert!(!names("my_hex::encode()", "hex"));
        assert!(!names("// serde is nice", "serde"));
    }
}
