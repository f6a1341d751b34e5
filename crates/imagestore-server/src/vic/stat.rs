//! StatPath's answer: one path of an image or writable layer, read from the header of a
//! filtered export (the only way every backend offers to look inside an image), with its mode
//! as Go's `os.FileMode` bits and its time in RFC 3339.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

use imagestore_core::layer::path;
use imagestore_core::{Error, FilterSpec, ImageId, ImageStorer, Result, StoreName};
use tar::EntryType;
use tokio_util::io::SyncIoBridge;

/// Go's `os.FileMode` type bits.
mod go_mode {
    pub(super) const DIR: u32 = 1 << 31;
    pub(super) const SYMLINK: u32 = 1 << 27;
    pub(super) const DEVICE: u32 = 1 << 26;
    pub(super) const NAMED_PIPE: u32 = 1 << 25;
    pub(super) const SETUID: u32 = 1 << 23;
    pub(super) const SETGID: u32 = 1 << 22;
    pub(super) const CHAR_DEVICE: u32 = 1 << 21;
    pub(super) const STICKY: u32 = 1 << 20;
}

/// What StatPath reports about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathInfo {
    /// The base name (empty for the root).
    pub(crate) name: String,
    /// Go's `os.FileMode` bits.
    pub(crate) mode: u32,
    /// Size in bytes (0 for directories).
    pub(crate) size: u64,
    /// A symlink's target.
    pub(crate) link_target: Option<String>,
    /// Modification time: seconds since the Unix epoch and nanoseconds.
    pub(crate) mtime: (i64, u32),
}

impl PathInfo {
    /// `modTime` as RFC 3339 in UTC with Go's `RFC3339Nano` fraction (trailing zeros dropped).
    pub(crate) fn mod_time(&self) -> String {
        rfc3339(self.mtime.0, self.mtime.1)
    }
}

/// Go's `FileMode` of a tar entry of type `kind` with permission bits `mode`.
fn file_mode(kind: EntryType, mode: u32) -> u32 {
    let mut m = mode & 0o777;
    if mode & 0o4000 != 0 {
        m |= go_mode::SETUID;
    }
    if mode & 0o2000 != 0 {
        m |= go_mode::SETGID;
    }
    if mode & 0o1000 != 0 {
        m |= go_mode::STICKY;
    }
    m | match kind {
        EntryType::Directory => go_mode::DIR,
        EntryType::Symlink => go_mode::SYMLINK,
        EntryType::Char => go_mode::DEVICE | go_mode::CHAR_DEVICE,
        EntryType::Block => go_mode::DEVICE,
        EntryType::Fifo => go_mode::NAMED_PIPE,
        _ => 0,
    }
}

/// What the export showed at the path.
enum Found {
    Entry(PathInfo),
    /// A hardlink: the file is described under this other path.
    Hardlink(String),
}

/// Path `p` (relative, no leading `/`) of image or writable layer `id`; `None` if absent.
pub(crate) async fn stat(
    storer: &Arc<dyn ImageStorer>,
    store: &StoreName,
    id: &ImageId,
    p: &str,
) -> Result<Option<PathInfo>> {
    let p = path::normalize(p)?;
    if p.is_empty() {
        // The root has no entry of its own in an export; it always exists.
        exists(storer, store, id).await?;
        return Ok(Some(PathInfo {
            name: String::new(),
            mode: go_mode::DIR | 0o755,
            size: 0,
            link_target: None,
            mtime: (0, 0),
        }));
    }
    match find(storer, store, id, &p).await? {
        None => Ok(None),
        Some(Found::Entry(info)) => Ok(Some(info)),
        Some(Found::Hardlink(target)) => match find(storer, store, id, &target).await? {
            Some(Found::Entry(info)) => Ok(Some(PathInfo {
                name: path::base(&p).to_owned(),
                ..info
            })),
            _ => Err(Error::corrupt(
                format!("{store}/{id}:{p}"),
                format!("hardlink to {target} which the export does not show"),
            )),
        },
    }
}

/// `NotFound` unless `id` is an image or a writable layer of `store`.
pub(crate) async fn exists(
    storer: &Arc<dyn ImageStorer>,
    store: &StoreName,
    id: &ImageId,
) -> Result<()> {
    match storer.get_image(store, id).await {
        Ok(_) => Ok(()),
        Err(Error::NotFound { .. }) => storer.get_writable(store, id).await.map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Exports only `p` itself (its children and unrelated paths excluded) and reads the header
/// naming it; the export stops as soon as it is found.
async fn find(
    storer: &Arc<dyn ImageStorer>,
    store: &StoreName,
    id: &ImageId,
    p: &str,
) -> Result<Option<Found>> {
    let filter = FilterSpec {
        inclusions: BTreeSet::from([p.to_owned()]),
        exclusions: BTreeSet::from([String::new(), format!("{p}/")]),
        ..FilterSpec::default()
    };
    let stream = storer.export(store, id, None, &filter, true).await?;
    let reader = SyncIoBridge::new(stream);
    let want = p.to_owned();
    tokio::task::spawn_blocking(move || read_entry(reader, &want))
        .await
        .map_err(|e| Error::invalid(format!("stat task failed: {e}")))?
}

fn read_entry(reader: impl Read, want: &str) -> Result<Option<Found>> {
    let bad = |e: std::io::Error| Error::bad_archive(format!("reading the export: {e}"));
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        if name.trim_start_matches("./").trim_end_matches('/') != want {
            continue;
        }
        let h = entry.header().clone();
        let kind = h.entry_type();
        if kind == EntryType::Link {
            let target = entry
                .link_name()
                .map_err(bad)?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(Some(Found::Hardlink(target)));
        }
        let mut mtime = (h.mtime().map_or(0, |m| m as i64), 0u32);
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts.flatten() {
                if ext.key().ok() == Some("mtime")
                    && let Ok(v) = ext.value()
                {
                    mtime = parse_pax_time(v).unwrap_or(mtime);
                }
            }
        }
        let size = match h.as_gnu() {
            Some(gnu) if kind == EntryType::GNUSparse => gnu.real_size().map_err(bad)?,
            _ => h.size().map_err(bad)?,
        };
        let link_target = if kind == EntryType::Symlink {
            entry
                .link_name()
                .map_err(bad)?
                .map(|l| l.to_string_lossy().into_owned())
        } else {
            None
        };
        let kind = if kind == EntryType::GNUSparse {
            EntryType::Regular
        } else {
            kind
        };
        return Ok(Some(Found::Entry(PathInfo {
            name: path::base(want).to_owned(),
            mode: file_mode(kind, h.mode().map_err(bad)?),
            size: if kind == EntryType::Directory {
                0
            } else {
                size
            },
            link_target,
            mtime,
        })));
    }
    Ok(None)
}

/// A PAX time, `secs[.fraction]`.
fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    // A negative time with a fraction counts back from the whole second.
    Some(if secs < 0 && nanos > 0 {
        (secs - 1, 1_000_000_000 - nanos)
    } else {
        (secs, nanos)
    })
}

/// `secs` and `nanos` since the Unix epoch as RFC 3339 in UTC, Go's `RFC3339Nano` form.
pub(crate) fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_go_file_modes() {
        assert_eq!(file_mode(EntryType::Directory, 0o755), 2_147_484_141);
        assert_eq!(file_mode(EntryType::Symlink, 0o777), (1 << 27) | 0o777);
        assert_eq!(file_mode(EntryType::Regular, 0o4755), (1 << 23) | 0o755);
        assert_eq!(
            file_mode(EntryType::Char, 0o600),
            (1 << 26) | (1 << 21) | 0o600
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, 500_000_000),
            "2023-11-14T22:13:20.5Z"
        );
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(parse_pax_time("12.25"), Some((12, 250_000_000)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
    }
}
