//! Parsing `vsphere://` URLs: `vsphere://host[:port]/<datacenter>/<datastore>/<folder>...`,
//! options as query parameters, credentials from the environment.

use std::path::PathBuf;

use imagestore_core::{Error, Result, Url};

use super::retry::DEFAULT_MAX_RETRIES;
use super::soap::Credentials;
use crate::config::{Options, work_option};
use imagestore_core::backend::storage::decode_name as percent_decode;

/// The environment variable holding the user name.
pub const USER_ENV: &str = "IMAGESTORE_VSPHERE_USER";
/// The environment variable holding the password.
pub const PASSWORD_ENV: &str = "IMAGESTORE_VSPHERE_PASSWORD";

/// The local folder of a `vsphere://` backend without `work=`: `imagestore/vsphere-<id>` in
/// the user's cache directory (`$XDG_CACHE_HOME`, else `~/.cache`; the temporary directory
/// only when neither is known), `<id>` naming the server and datastore folder.
pub fn default_work(base_url: &Url) -> PathBuf {
    let id = imagestore_core::backend::lock::range_for(base_url.as_str());
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    cache.join("imagestore").join(format!("vsphere-{id:016x}"))
}

/// Configuration of a `vsphere://` backend.
#[derive(Debug, Clone)]
pub struct VsphereConfig {
    /// The server's base URL (`https://host:port`, or `http://` with `allow_http=true`).
    pub server: Url,
    /// The datacenter's inventory path (`DC0`, or `folder/DC0`).
    pub datacenter: String,
    /// The datastore's name.
    pub datastore: String,
    /// The folder on the datastore that holds `VIC/`, `/`-separated, never empty.
    pub folder: String,
    /// Accept any TLS certificate (`insecure=true`).
    pub insecure: bool,
    /// The login.
    pub credentials: Credentials,
    /// Local folder for builds and the disk cache (`work=`); by default a folder of the
    /// user's cache directory ([`default_work`]).
    pub work: Option<PathBuf>,
    /// Bytes the local disk cache keeps at most (`cache_mib=`, default 4 GiB).
    pub cache_bytes: u64,
    /// Backend options. `options.format` is what the URL names or, without `format=`, the
    /// default until [`VsphereStore::open`](super::VsphereStore::open) picks the format from
    /// the datastore.
    pub options: Options,
    /// True if the URL names the delta format (`format=`).
    pub format_given: bool,
    /// How many times a request that is safe to resend is retried after a transient failure
    /// (`max_retries=`, default 4).
    pub max_retries: u32,
}

fn flag(url: &Url, k: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Error::invalid(format!(
            "{}: {k}={v:?} must be true or false",
            crate::vsphere::redacted(url)
        ))),
    }
}

/// A path segment of the URL, decoded; refused if empty, `.`, `..` or holding a `/` once
/// decoded where none may be.
fn segment(url: &Url, s: &str, what: &str, slash_ok: bool) -> Result<String> {
    let d = percent_decode(s).ok_or_else(|| {
        Error::invalid(format!(
            "{}: bad encoding in the {what}",
            crate::vsphere::redacted(url)
        ))
    })?;
    let bad = d.is_empty()
        || d.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        || (!slash_ok && d.contains('/'))
        || d.contains(['[', ']', '\0', '\\']);
    if bad {
        return Err(Error::invalid(format!(
            "{}: {d:?} cannot be a {what}",
            crate::vsphere::redacted(url)
        )));
    }
    Ok(d)
}

impl VsphereConfig {
    /// Parses a `vsphere://` URL; the login comes from `user` and `password` (the
    /// environment's `IMAGESTORE_VSPHERE_USER` and `IMAGESTORE_VSPHERE_PASSWORD` for
    /// [`VsphereConfig::from_url`]).
    pub fn parse(url: &Url, user: Option<String>, password: Option<String>) -> Result<Self> {
        let shown = crate::vsphere::redacted(url);
        if url.scheme() != "vsphere" {
            return Err(Error::invalid(format!("{shown} is not a vsphere:// URL")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::invalid(format!(
                "{shown}: credentials do not go in the URL; set {USER_ENV} and {PASSWORD_ENV}"
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::invalid(format!("{shown} names no server")))?;
        let segs: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        if segs.len() < 3 {
            return Err(Error::invalid(format!(
                "{shown}: expected vsphere://host/<datacenter>/<datastore>/<folder>"
            )));
        }
        let datacenter = segment(url, segs[0], "datacenter", true)?;
        let datastore = segment(url, segs[1], "datastore name", false)?;
        let folder = segs[2..]
            .iter()
            .map(|s| segment(url, s, "datastore folder", false))
            .collect::<Result<Vec<_>>>()?
            .join("/");
        let (options, rest) = Options::from_query(url)?;
        let format_given = url.query_pairs().any(|(k, _)| k == "format");
        let (mut allow_http, mut insecure, mut work) = (false, false, None);
        let mut cache_bytes = super::cache::DEFAULT_BUDGET;
        let mut max_retries = DEFAULT_MAX_RETRIES;
        for (k, v) in rest {
            match k.as_str() {
                "allow_http" => allow_http = flag(url, &k, &v)?,
                "insecure" => insecure = flag(url, &k, &v)?,
                "work" => work = Some(work_option(url, &v)?),
                "cache_mib" => {
                    cache_bytes = v
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (1..=1 << 24).contains(n))
                        .map(|n| n << 20)
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "{shown}: cache_mib={v:?} must be a number of MiB from 1 to 16777216"
                            ))
                        })?;
                }
                "max_retries" => {
                    max_retries = v.parse().ok().filter(|n| *n <= 20).ok_or_else(|| {
                        Error::invalid(format!(
                            "{shown}: max_retries={v:?} must be a number from 0 to 20"
                        ))
                    })?;
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "{shown} has unknown option {k:?} \
                         (known: allow_http, insecure, capacity_kib, format, work, cache_mib, max_retries)"
                    )));
                }
            }
        }
        let mut server = Url::parse(if allow_http { "http://x" } else { "https://x" })
            .map_err(|e| Error::invalid(e.to_string()))?;
        server
            .set_host(Some(host))
            .map_err(|e| Error::invalid(format!("{shown}: {e}")))?;
        server
            .set_port(url.port())
            .map_err(|()| Error::invalid(format!("{shown}: bad port")))?;
        let credentials = match (user, password) {
            (Some(user), Some(password)) if !user.is_empty() => Credentials { user, password },
            _ => {
                return Err(Error::invalid(format!(
                    "{shown}: set {USER_ENV} and {PASSWORD_ENV} to log in"
                )));
            }
        };
        Ok(VsphereConfig {
            server,
            datacenter,
            datastore,
            folder,
            insecure,
            credentials,
            work,
            cache_bytes,
            options,
            format_given,
            max_retries,
        })
    }

    /// [`VsphereConfig::parse`] with the login from the environment.
    pub fn from_url(url: &Url) -> Result<Self> {
        VsphereConfig::parse(
            url,
            std::env::var(USER_ENV).ok(),
            std::env::var(PASSWORD_ENV).ok(),
        )
    }

    /// The backend's own URL, without options: `vsphere://host:port/dc/ds/folder`.
    pub fn base_url(&self) -> Result<Url> {
        let mut u = Url::parse("vsphere://x/").map_err(|e| Error::invalid(e.to_string()))?;
        u.set_host(self.server.host_str())
            .map_err(|e| Error::invalid(e.to_string()))?;
        u.set_port(self.server.port())
            .map_err(|()| Error::invalid("bad port"))?;
        if let Ok(mut p) = u.path_segments_mut() {
            p.clear();
            p.push(&self.datacenter);
            p.push(&self.datastore);
            p.extend(self.folder.split('/'));
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Result<Url> {
        Url::parse(s).map_err(|e| Error::invalid(e.to_string()))
    }

    fn login() -> (Option<String>, Option<String>) {
        (Some("user".into()), Some("secret".into()))
    }

    #[test]
    fn parses_servers_paths_and_options() -> Result<()> {
        let (user, pw) = login();
        let c = VsphereConfig::parse(
            &u(
                "vsphere://127.0.0.1:8989/DC0/LocalDS_0/images/a?allow_http=true&capacity_kib=1048576",
            )?,
            user,
            pw,
        )?;
        assert_eq!(c.server.as_str(), "http://127.0.0.1:8989/");
        assert_eq!(
            (c.datacenter.as_str(), c.datastore.as_str()),
            ("DC0", "LocalDS_0")
        );
        assert_eq!(c.folder, "images/a");
        assert_eq!(c.options.capacity_kib, 1 << 20);
        assert_eq!(c.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(
            c.base_url()?.as_str(),
            "vsphere://127.0.0.1:8989/DC0/LocalDS_0/images/a"
        );
        let (user, pw) = login();
        let c = VsphereConfig::parse(&u("vsphere://vc.example/DC%201/ds1/vic")?, user, pw)?;
        assert_eq!(c.server.as_str(), "https://vc.example/");
        assert_eq!(c.datacenter, "DC 1");
        let (user, pw) = login();
        let c = VsphereConfig::parse(&u("vsphere://vc/DC0/ds/f?max_retries=0")?, user, pw)?;
        assert_eq!(c.max_retries, 0);
        assert!(!c.format_given, "the datastore decides");
        assert!(!format!("{c:?}").contains("secret"));
        let (user, pw) = login();
        let c = VsphereConfig::parse(&u("vsphere://vc/DC0/ds/f?format=seSparse")?, user, pw)?;
        assert!(c.format_given);
        assert_eq!(c.options.format, crate::vmdk::format::DiskFormat::SeSparse);
        for bad in [
            "vsphere://vc/DC0/ds",
            "vsphere://vc/DC0/ds/..",
            "vsphere://vc/DC0/ds%2Fx/f",
            "vsphere://vc/DC0/ds/f?insecure=maybe",
            "vsphere://vc/DC0/ds/f?nope=1",
            "vsphere://vc/DC0/ds/f?max_retries=many",
            "vsphere://vc/DC0/ds/f?max_retries=99",
            "vsphere://vc/DC0/ds/f?format=vsanSparse",
            "vsphere://user:pw@vc/DC0/ds/f",
            "vsphere:///DC0/ds/f",
            "vmdk:///x",
        ] {
            let (user, pw) = login();
            assert!(VsphereConfig::parse(&u(bad)?, user, pw).is_err(), "{bad}");
        }
        let e = VsphereConfig::parse(&u("vsphere://vc/DC0/ds/f")?, None, None);
        assert!(matches!(e, Err(Error::InvalidArgument(m)) if m.contains(USER_ENV)));
        let e = VsphereConfig::parse(&u("vsphere://user:pw@vc/DC0/ds/f")?, None, None);
        assert!(matches!(e, Err(Error::InvalidArgument(m)) if !m.contains("pw@")));
        Ok(())
    }
}
