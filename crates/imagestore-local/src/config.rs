//! Parsing `file://` URLs into a backend configuration.

use std::path::PathBuf;

use imagestore_core::{Error, Result, Url};

/// Configuration of a local backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The directory holding every store.
    pub root: PathBuf,
}

impl Config {
    /// Parses `file:///absolute/path`. Query parameters are not accepted (there are none yet),
    /// so a typo is reported rather than ignored.
    pub fn from_url(url: &Url) -> Result<Config> {
        // file:// has no options: every query value is hidden in messages.
        let shown = imagestore_core::redact::redact_options(url, &[]);
        if url.scheme() != "file" {
            return Err(Error::invalid(format!("{shown} is not a file:// URL")));
        }
        if url
            .host_str()
            .is_some_and(|h| !h.is_empty() && h != "localhost")
        {
            return Err(Error::invalid(format!(
                "file URL {shown} names host {:?}; use file:///absolute/path",
                url.host_str().unwrap_or_default()
            )));
        }
        if url.query().is_some() {
            let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            return Err(Error::invalid(format!(
                "file URL {shown} has unknown options {names:?} (file:// takes none)"
            )));
        }
        let root = url
            .to_file_path()
            .map_err(|()| Error::invalid(format!("file URL {shown} is not an absolute path")))?;
        if !root.is_absolute() || root.parent().is_none() {
            return Err(Error::invalid(format!(
                "file URL {shown} must name an absolute directory other than /"
            )));
        }
        Ok(Config { root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_paths_only() -> Result<()> {
        let u = |s: &str| Url::parse(s).map_err(|e| Error::invalid(e.to_string()));
        assert_eq!(
            Config::from_url(&u("file:///var/lib/x")?)?.root,
            PathBuf::from("/var/lib/x")
        );
        assert!(Config::from_url(&u("file://host/x")?).is_err());
        assert!(Config::from_url(&u("file:///x?fsync=0")?).is_err());
        assert!(Config::from_url(&u("file:///")?).is_err());
        assert!(Config::from_url(&u("s3://b/x")?).is_err());
        Ok(())
    }
}
