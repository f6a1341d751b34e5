//! Normalised, root-relative layer paths.
//!
//! A tar entry name is turned into a relative path of plain components (`a/b/c`): leading `/`
//! and `./` are dropped, `.` components vanish and `..` pops a component. A `..` that would
//! leave the root is an error, never silently clamped: a hostile tar must be refused, not
//! reinterpreted. The root itself is the empty path.

use crate::error::{Error, Result};

/// Longest normalised path accepted, in bytes: Linux's `PATH_MAX` (4096) less its
/// terminating NUL.
pub const MAX_PATH_LEN: usize = 4095;

/// Normalises a tar entry name; `raw` is the name as it appears in the archive (for messages).
pub fn normalize(raw: &str) -> Result<String> {
    if raw.contains('\0') {
        return Err(Error::bad_entry(raw, "path contains a NUL byte"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(Error::bad_entry(raw, "path escapes the root"));
                }
            }
            c => parts.push(c),
        }
    }
    let path = parts.join("/");
    if path.len() > MAX_PATH_LEN {
        return Err(Error::bad_entry(
            &raw[..raw.char_indices().nth(64).map_or(raw.len(), |(i, _)| i)],
            format!(
                "path is {} bytes long; the maximum is {MAX_PATH_LEN}",
                path.len()
            ),
        ));
    }
    Ok(path)
}

/// The parent of a normalised path (`""` for top-level entries and the root).
pub fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// The last component of a normalised path.
pub fn base(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// Joins a normalised directory and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Iterates over the strict ancestors of a normalised path, nearest first, root excluded.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut cur = path;
    std::iter::from_fn(move || {
        let i = cur.rfind('/')?;
        cur = &cur[..i];
        Some(cur)
    })
}

/// True when `path` is `dir` or lies below it (`dir` empty means the root, containing all).
pub fn is_within(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// Resolves a symlink target as the kernel would inside a root, lexically: relative targets
/// start from the link's directory, absolute ones from the root, `..` stops at the root.
/// Used only to decide whether a hardlink or a path stays inside; checkout resolves in the
/// kernel with `RESOLVE_IN_ROOT`.
pub fn resolve_lexically(link_dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') || link_dir.is_empty() {
        Vec::new()
    } else {
        link_dir.split('/').collect()
    };
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() -> Result<()> {
        assert_eq!(normalize("./a/b/")?, "a/b");
        assert_eq!(normalize("/abs/x")?, "abs/x");
        assert_eq!(normalize("a/./b/../c")?, "a/c");
        assert_eq!(normalize("./")?, "");
        assert_eq!(normalize("a/..")?, "");
        Ok(())
    }

    #[test]
    fn refuses_escapes() {
        for bad in ["..", "../x", "a/../../x", "/../etc/passwd", "./a/../../b"] {
            assert!(
                matches!(normalize(bad), Err(Error::BadArchive { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
        assert_eq!(base("a/b/c"), "c");
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a/b", "a"]);
        assert!(is_within("a/b", "a"));
        assert!(!is_within("ab", "a"));
        assert!(is_within("x", ""));
        assert_eq!(resolve_lexically("a/b", "../c"), "a/c");
        assert_eq!(resolve_lexically("a/b", "/etc/../../x"), "x");
        assert_eq!(resolve_lexically("", "../../.."), "");
    }
}
