//! What `imagestore --version` says about this build: the version, the commit it was built
//! from and the URL schemes (backends) compiled in.

/// The commit a release build was made from, set by `cargo xtask dist` through the
/// `IMAGESTORE_BUILD_COMMIT` variable at compile time; `None` for any other build.
pub const COMMIT: Option<&str> = option_env!("IMAGESTORE_BUILD_COMMIT");

/// The version line of `-V`: `0.1.0 (commit 1a2b3c4d5e6f)`, `-dirty` appended when the
/// build's sources differed from the commit.
pub fn short_version() -> String {
    match COMMIT {
        Some(c) => {
            let (hash, dirty) = match c.strip_suffix("-dirty") {
                Some(h) => (h, "-dirty"),
                None => (c, ""),
            };
            format!(
                "{} (commit {}{dirty})",
                env!("CARGO_PKG_VERSION"),
                hash.get(..12).unwrap_or(hash)
            )
        }
        None => format!("{} (commit unknown)", env!("CARGO_PKG_VERSION")),
    }
}

/// The text of `--version`: the version, the full commit and the backends compiled in.
pub fn long_version() -> String {
    format!(
        "{}\ncommit: {}\nbackends: {}",
        env!("CARGO_PKG_VERSION"),
        COMMIT.unwrap_or("unknown (not built by `cargo xtask dist`)"),
        imagestore::schemes().join(", ")
    )
}
