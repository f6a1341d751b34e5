//! Parsing `imagestore+http://` and `imagestore+https://` URLs into a backend configuration.
//!
//! `imagestore+https://host:port/optional/prefix?token_file=/etc/imagestore/token&ca=/etc/imagestore/ca.pem`.
//! The URL names the server (`imagestore serve`) and, with a path, the prefix it is served
//! under behind a reverse proxy. Secrets never come from the URL itself: a bearer token is read
//! from the file `token_file` names when the store is opened.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use imagestore_core::{Error, Result, Url};

/// The scheme of a server spoken to over plain HTTP.
pub const SCHEME_HTTP: &str = "imagestore+http";
/// The scheme of a server spoken to over HTTPS.
pub const SCHEME_HTTPS: &str = "imagestore+https";

/// The options of the backend's URLs, none of them secret (`token_file` and `ca` are paths).
pub const REMOTE_OPTIONS: &[&str] = &[
    "token_file",
    "ca",
    "connect_timeout",
    "read_timeout",
    "timeout",
    "insecure",
];

/// Configuration of a remote backend. It holds no secret (the token stays in its file until
/// the store is opened), so its `Debug` output is safe to log.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// [`SCHEME_HTTP`] or [`SCHEME_HTTPS`].
    pub scheme: &'static str,
    /// The server's base URL (`http://host:port/prefix`), without a trailing `/`; the API's
    /// paths (`/v1/...`) follow it.
    pub base: String,
    /// A file holding the bearer token sent with every request (`token_file=`).
    pub token_file: Option<PathBuf>,
    /// A PEM file of certificates to trust for the server, besides the system's roots (`ca=`,
    /// HTTPS only).
    pub ca: Option<PathBuf>,
    /// Longest wait for a connection (`connect_timeout=10s`).
    pub connect_timeout: Duration,
    /// Longest wait for the server's next bytes (`read_timeout=5m`).
    pub read_timeout: Duration,
    /// Longest time one request may take as a whole, body included (`timeout=`; none by
    /// default, since a layer upload takes as long as its size needs).
    pub timeout: Option<Duration>,
    /// Send the token over plain HTTP to a host other than loopback (`insecure=true`).
    pub insecure: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Field by field, so that a secret field added later does not leak by default.
        f.debug_struct("Config")
            .field("scheme", &self.scheme)
            .field("base", &self.base)
            .field("token_file", &self.token_file)
            .field("ca", &self.ca)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("timeout", &self.timeout)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Config {
    /// Parses `imagestore+http[s]://host[:port][/prefix][?options]`. Unknown options are
    /// refused, so a typo is reported rather than ignored; so are user names and passwords
    /// in the URL.
    pub fn from_url(url: &Url) -> Result<Config> {
        let shown = imagestore_core::redact::redact_options(url, REMOTE_OPTIONS);
        let (scheme, http) = match url.scheme() {
            SCHEME_HTTP => (SCHEME_HTTP, "http"),
            SCHEME_HTTPS => (SCHEME_HTTPS, "https"),
            _ => {
                return Err(Error::invalid(format!(
                    "{shown} is not an {SCHEME_HTTP}:// or {SCHEME_HTTPS}:// URL"
                )));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::invalid(format!(
                "remote URL {shown} carries credentials; put the bearer token in a file and \
                 name it with token_file= instead"
            )));
        }
        if url.fragment().is_some() {
            return Err(Error::invalid(format!("remote URL {shown} has a fragment")));
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h,
            _ => {
                return Err(Error::invalid(format!(
                    "remote URL {shown} names no server (expected {scheme}://host:port)"
                )));
            }
        };
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let prefix = url.path().trim_end_matches('/');
        let mut cfg = Config {
            scheme,
            base: format!("{http}://{host}{port}{prefix}"),
            token_file: None,
            ca: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            timeout: None,
            insecure: false,
        };
        for (k, v) in url.query_pairs() {
            let bad = |what: &str| {
                let v = imagestore_core::redact::option_value(&k, &v, REMOTE_OPTIONS);
                Error::invalid(format!("remote URL {shown}: option {k}={v:?}: {what}"))
            };
            match k.as_ref() {
                "token_file" if !v.is_empty() => cfg.token_file = Some(PathBuf::from(&*v)),
                "ca" if !v.is_empty() => cfg.ca = Some(PathBuf::from(&*v)),
                "token_file" | "ca" => return Err(bad("expected a file path")),
                "connect_timeout" => {
                    cfg.connect_timeout = parse_duration(&v).map_err(|e| bad(&e))?
                }
                "read_timeout" => cfg.read_timeout = parse_duration(&v).map_err(|e| bad(&e))?,
                "timeout" => cfg.timeout = Some(parse_duration(&v).map_err(|e| bad(&e))?),
                "insecure" => {
                    cfg.insecure = match v.as_ref() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("expected true or false")),
                    }
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "remote URL {shown} has unknown option {k:?} (known: {})",
                        REMOTE_OPTIONS.join(", ")
                    )));
                }
            }
        }
        if cfg.ca.is_some() && scheme == SCHEME_HTTP {
            return Err(Error::invalid(format!(
                "remote URL {shown}: ca= applies to {SCHEME_HTTPS}:// only"
            )));
        }
        if cfg.token_file.is_some() && scheme == SCHEME_HTTP && !cfg.insecure && !is_loopback(host)
        {
            return Err(Error::invalid(format!(
                "remote URL {shown}: a token would cross the network in the clear; use \
                 {SCHEME_HTTPS}://, or insecure=true to send it anyway"
            )));
        }
        Ok(cfg)
    }

    /// The store's URL for messages: the scheme and the server, without options.
    pub fn shown(&self) -> String {
        let rest = self.base.split_once("://").map_or("", |(_, r)| r);
        format!("{}://{rest}", self.scheme)
    }
}

/// Whether `host` (as a URL holds it: IPv6 in brackets) is a loopback name or address.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `30s`, `500ms`, `2m`, or a plain number of seconds; zero is refused.
fn parse_duration(v: &str) -> std::result::Result<Duration, String> {
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(v).map_err(|e| e.to_string())?,
    };
    if d.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Result<Url> {
        Url::parse(s).map_err(|e| Error::invalid(e.to_string()))
    }

    #[test]
    fn parses_server_prefix_and_options() -> Result<()> {
        let c = Config::from_url(&u(
            "imagestore+https://store.example:8443/api/?token_file=/etc/t&ca=/etc/ca.pem&connect_timeout=3s&read_timeout=1m&timeout=2h",
        )?)?;
        assert_eq!(c.scheme, SCHEME_HTTPS);
        assert_eq!(c.base, "https://store.example:8443/api");
        assert_eq!(c.token_file, Some(PathBuf::from("/etc/t")));
        assert_eq!(c.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.read_timeout, Duration::from_secs(60));
        assert_eq!(c.timeout, Some(Duration::from_secs(7200)));
        assert_eq!(c.shown(), "imagestore+https://store.example:8443/api");
        let plain = Config::from_url(&u("imagestore+http://127.0.0.1:7000")?)?;
        assert_eq!(plain.scheme, SCHEME_HTTP);
        assert_eq!(plain.base, "http://127.0.0.1:7000");
        assert!(plain.token_file.is_none() && plain.timeout.is_none());
        // A token over plain HTTP is fine on loopback.
        for local in [
            "imagestore+http://localhost:1/?token_file=/t",
            "imagestore+http://[::1]:1/?token_file=/t",
            "imagestore+http://h:1/?token_file=/t&insecure=true",
        ] {
            assert!(
                Config::from_url(&u(local)?)?.token_file.is_some(),
                "{local}"
            );
        }
        Ok(())
    }

    #[test]
    fn refuses_credentials_typos_and_clear_tokens() -> Result<()> {
        for bad in [
            "imagestore+http://user:secret@h:1",
            "imagestore+http://user@h:1",
            "imagestore+http://h:1?tokenfile=/t",
            "imagestore+http://h:1?token=secret",
            "imagestore+http://h:1?token_file=",
            "imagestore+http://h:1?ca=/ca.pem",
            "imagestore+http://h:1?token_file=/t",
            "imagestore+http://h:1?timeout=0s",
            "imagestore+http://h:1?read_timeout=soon",
            "imagestore+http://h:1?insecure=yes",
            "imagestore+http://h:1#frag",
            "http://h:1",
        ] {
            match Config::from_url(&u(bad)?) {
                Err(Error::InvalidArgument(msg)) => {
                    assert!(!msg.contains("secret"), "{bad}: {msg}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn debug_shows_no_secrets() -> Result<()> {
        let c = Config::from_url(&u("imagestore+https://h:1?token_file=/run/secret-token")?)?;
        let d = format!("{c:?}");
        assert!(d.contains("https://h:1") && d.contains("token_file"));
        Ok(())
    }
}
