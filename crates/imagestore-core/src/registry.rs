//! The scheme registry: backends register at link time with [`inventory`], and [`open`] picks
//! one by the URL's scheme.
//!
//! A backend crate submits one [`Backend`] per scheme:
//!
//! ```text
//! inventory::submit! {
//!     imagestore_core::registry::Backend {
//!         scheme: "file",
//!         feature: "local",
//!         description: "a directory on local disk",
//!         open: open_local,
//!     }
//! }
//! ```
//!
//! The facade crate `imagestore` references every backend it was built with, so that the
//! linker keeps their registrations.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use url::Url;

use crate::error::{Error, Result};
use crate::storer::ImageStorer;

/// The future a backend's opener returns.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn ImageStorer>>> + Send>>;

/// One registered backend scheme.
#[derive(Debug)]
pub struct Backend {
    /// The URL scheme, lower case, without `:`.
    pub scheme: &'static str,
    /// The facade feature that compiles this backend in.
    pub feature: &'static str,
    /// A few words for `--help` and error messages.
    pub description: &'static str,
    /// Opens a backend for a URL of this scheme.
    pub open: fn(Url) -> OpenFuture,
}

inventory::collect!(Backend);

/// Schemes the project knows, with the facade feature that provides each; used to say
/// "compiled without feature x" instead of just "unknown scheme".
pub const KNOWN_SCHEMES: &[(&str, &str)] = &[
    ("file", "local"),
    ("s3", "s3"),
    ("vmdk", "vmdk"),
    ("vsphere", "vsphere"),
    ("imagestore+http", "remote"),
    ("imagestore+https", "remote"),
];

/// Every registered backend, sorted by scheme.
pub fn backends() -> Vec<&'static Backend> {
    let mut all: Vec<&'static Backend> = inventory::iter::<Backend>.into_iter().collect();
    all.sort_by_key(|b| b.scheme);
    all
}

/// The registered schemes, sorted, without duplicates.
pub fn schemes() -> Vec<&'static str> {
    let mut s: Vec<&'static str> = backends().iter().map(|b| b.scheme).collect();
    s.dedup();
    s
}

/// Fails if two backends registered the same scheme.
pub fn check_unique() -> Result<()> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for b in backends() {
        *seen.entry(b.scheme).or_default() += 1;
    }
    let dups: Vec<&str> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(s, _)| s)
        .collect();
    if dups.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "scheme(s) registered by more than one backend: {}",
            dups.join(", ")
        )))
    }
}

/// Finds the one backend registered for `scheme`.
pub fn lookup(scheme: &str) -> Result<&'static Backend> {
    let scheme = scheme.to_ascii_lowercase();
    let matching: Vec<&'static Backend> = backends()
        .into_iter()
        .filter(|b| b.scheme == scheme)
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => {
            let hint = KNOWN_SCHEMES
                .iter()
                .find(|(s, _)| *s == scheme)
                .map(|(_, feature)| format!("this build was compiled without the `{feature}` feature of the imagestore crate"));
            Err(Error::UnknownScheme {
                scheme,
                available: schemes().into_iter().map(String::from).collect(),
                hint,
            })
        }
        _ => Err(Error::invalid(format!(
            "scheme {scheme:?} is registered by {} backends; a build must link only one",
            matching.len()
        ))),
    }
}

/// Opens the backend for `url`, chosen by its scheme.
///
/// `UnknownScheme` lists the schemes this build can open; a URL that does not parse is
/// `InvalidArgument`. The URL is only ever echoed redacted ([`crate::redact`]).
pub async fn open(url: &str) -> Result<Arc<dyn ImageStorer>> {
    check_authority(url)?;
    let parsed =
        Url::parse(url).map_err(|e| Error::invalid(format!("store URL {:?}: {e}", redact(url))))?;
    if parsed.fragment().is_some() {
        return Err(Error::invalid(format!(
            "store URL {} has a fragment (#...), which no backend reads",
            redact(url)
        )));
    }
    let backend = lookup(parsed.scheme())?;
    (backend.open)(parsed).await
}

/// Every store URL is `scheme://...`. Without the `//`, the URL parser would read
/// `file:relative` as `file:///relative`, a directory at the root of the file system; such
/// URLs are refused instead.
fn check_authority(url: &str) -> Result<()> {
    match url.split_once(':') {
        Some((scheme, rest)) if !rest.starts_with("//") => Err(Error::invalid(format!(
            "store URL {:?} has no \"//\" after \"{scheme}:\"; write {scheme}://... \
             (a directory is file:///absolute/path)",
            redact(url)
        ))),
        _ => Ok(()),
    }
}

pub use crate::redact::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_authority_are_refused() {
        for bad in ["file:relative", "file:./x", "file:/abs", "s3:bucket/x"] {
            match check_authority(bad) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains("no \"//\""), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(check_authority("file:///abs").is_ok());
        assert!(check_authority("s3://b/p").is_ok());
    }

    #[test]
    fn unknown_scheme_names_feature() {
        // The core crate alone links no backend.
        match lookup("s3") {
            Err(Error::UnknownScheme { hint: Some(h), .. }) => assert!(h.contains("`s3`")),
            other => panic!("unexpected {other:?}"),
        }
        match lookup("imagestore+https") {
            Err(Error::UnknownScheme { hint: Some(h), .. }) => assert!(h.contains("`remote`")),
            other => panic!("unexpected {other:?}"),
        }
        match lookup("gopher") {
            Err(Error::UnknownScheme { hint: None, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
