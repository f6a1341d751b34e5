//! Parsing `vmdk://` URLs, and the options every disk backend shares.

use std::path::PathBuf;

use imagestore_core::backend::storage::decode_name;
use imagestore_core::layer::ingest::IngestLimits;
use imagestore_core::{Error, Result, Url};

use crate::build::DEFAULT_CAPACITY_KIB;
use crate::vmdk::format::DiskFormat;

/// Smallest scratch capacity accepted, in KiB (ext4 with a journal needs room).
pub const MIN_CAPACITY_KIB: u64 = 32 * 1024;
/// Largest scratch capacity accepted, in KiB (2 TiB, the hosted sparse format's limit).
pub const MAX_CAPACITY_KIB: u64 = 2 << 30;

/// Options of a disk backend, from URL query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Capacity of new stores' scratch disks in KiB (every layer inherits it); VIC's default
    /// is 8,000,000 KiB.
    pub capacity_kib: u64,
    /// The format of a new store's disks (`format=`; default monolithicSparse); a layer is
    /// always written in its parent's format, so a chain never mixes formats. With ESXi's
    /// native formats the scratch image is a flat base disk left all zero and a first delta
    /// disk holding the file system (decision 0023).
    pub format: DiskFormat,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity_kib: DEFAULT_CAPACITY_KIB,
            format: DiskFormat::default(),
        }
    }
}

impl Options {
    /// The ingest bounds of a store with these options: no file may be larger than the
    /// scratch disk's capacity, which every layer inherits.
    pub fn ingest_limits(&self) -> IngestLimits {
        IngestLimits {
            max_file_size: self.capacity_kib.saturating_mul(1024),
            ..IngestLimits::default()
        }
    }

    /// Reads the options this module knows (`capacity_kib`, `format`) from `url`'s query;
    /// other keys are returned for the caller to check.
    pub fn from_query(url: &Url) -> Result<(Options, Vec<(String, String)>)> {
        let mut o = Options::default();
        let mut rest = Vec::new();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "capacity_kib" => {
                    let kib: u64 = v.parse().map_err(|_| {
                        Error::invalid(format!("capacity_kib={v:?} is not a number of KiB"))
                    })?;
                    if !(MIN_CAPACITY_KIB..=MAX_CAPACITY_KIB).contains(&kib)
                        || !kib.is_multiple_of(64)
                    {
                        return Err(Error::invalid(format!(
                            "capacity_kib={kib} must be a multiple of 64 between \
                             {MIN_CAPACITY_KIB} and {MAX_CAPACITY_KIB}"
                        )));
                    }
                    o.capacity_kib = kib;
                }
                "format" => {
                    o.format = v.parse().map_err(|e: crate::vmdk::format::UnknownFormat| {
                        Error::invalid(format!("format={v:?}: {e}"))
                    })?;
                }
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        Ok((o, rest))
    }
}

/// Configuration of a `vmdk://` backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The datastore root: a local directory holding `VIC/`.
    pub root: PathBuf,
    /// Where layers are built (`work=`; default `<root>/.imagestore-work`). A fast local
    /// file system helps: each build makes a sparse raw image of its chain there.
    pub work: Option<PathBuf>,
    /// Backend options.
    pub options: Options,
}

/// The `work=` option: an absolute local directory.
pub fn work_option(url: &Url, value: &str) -> Result<PathBuf> {
    let url = imagestore_core::redact::redact_url(url);
    let p = PathBuf::from(value);
    if !p.is_absolute() {
        return Err(Error::invalid(format!(
            "{url}: work={value:?} must be an absolute directory"
        )));
    }
    Ok(p)
}

/// The options of `vmdk://` URLs, none of them secret (shown in messages).
pub const VMDK_OPTIONS: &[&str] = &["capacity_kib", "format", "work"];

impl Config {
    /// Parses `vmdk:///absolute/path[?capacity_kib=N][&format=F][&work=/dir]`; unknown options are
    /// refused, so a typo is reported rather than ignored.
    pub fn from_url(url: &Url) -> Result<Config> {
        let shown = imagestore_core::redact::redact_options(url, VMDK_OPTIONS);
        if url.scheme() != "vmdk" {
            return Err(Error::invalid(format!("{shown} is not a vmdk:// URL")));
        }
        if url.host_str().is_some_and(|h| !h.is_empty()) {
            return Err(Error::invalid(format!(
                "vmdk URL {shown} names a host; use vmdk:///absolute/path"
            )));
        }
        let (options, rest) = Options::from_query(url)?;
        let mut work = None;
        for (k, v) in rest {
            match k.as_str() {
                "work" => work = Some(work_option(url, &v)?),
                _ => {
                    return Err(Error::invalid(format!(
                        "vmdk URL {shown} has unknown option {k:?} (known: capacity_kib, format, work)"
                    )));
                }
            }
        }
        let root = PathBuf::from(
            decode_name(url.path())
                .ok_or_else(|| Error::invalid(format!("vmdk URL {shown}: bad path encoding")))?,
        );
        if !root.is_absolute() || root.parent().is_none() {
            return Err(Error::invalid(format!(
                "vmdk URL {shown} must name an absolute directory other than /"
            )));
        }
        Ok(Config {
            root,
            work,
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Result<Url> {
        Url::parse(s).map_err(|e| Error::invalid(e.to_string()))
    }

    #[test]
    fn parses_roots_and_options() -> Result<()> {
        let c = Config::from_url(&u("vmdk:///srv/ds%20one")?)?;
        assert_eq!(c.root, PathBuf::from("/srv/ds one"));
        assert_eq!(c.options.capacity_kib, DEFAULT_CAPACITY_KIB);
        let c = Config::from_url(&u("vmdk:///srv/ds?capacity_kib=1048576")?)?;
        assert_eq!(c.options.capacity_kib, 1 << 20);
        assert_eq!(c.options.format, DiskFormat::MonolithicSparse);
        let c = Config::from_url(&u("vmdk:///srv/ds?format=vmfsSparse")?)?;
        assert_eq!(c.options.format, DiskFormat::VmfsSparse);
        let c = Config::from_url(&u("vmdk:///srv/ds?format=seSparse")?)?;
        assert_eq!(c.options.format, DiskFormat::SeSparse);
        match Config::from_url(&u("vmdk:///srv/ds?format=vmfs")?) {
            Err(Error::InvalidArgument(message)) => {
                assert!(
                    message.contains("unknown disk format \"vmfs\""),
                    "{message}"
                );
            }
            other => panic!("format=vmfs: {other:?}"),
        }
        let c = Config::from_url(&u("vmdk:///srv/ds?work=/dev/shm/w")?)?;
        assert_eq!(c.work, Some(PathBuf::from("/dev/shm/w")));
        for bad in [
            "vmdk://host/srv",
            "vmdk:///",
            "vmdk:///srv?capacity_kib=100",
            "vmdk:///srv?capacity_kib=x",
            "vmdk:///srv?capacty_kib=1048576",
            "vmdk:///srv?work=relative",
            "file:///srv",
        ] {
            assert!(Config::from_url(&u(bad)?).is_err(), "{bad}");
        }
        Ok(())
    }
}
