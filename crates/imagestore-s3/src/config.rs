//! Parsing `s3://` URLs into a backend configuration.
//!
//! `s3://bucket/optional/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&allow_http=true`.
//! Credentials never come from the URL: they come from the usual `AWS_*` environment variables
//! and the AWS credential chain (web identity, ECS, instance metadata), read by `object_store`.

use std::fmt;
use std::time::Duration;

use imagestore_core::{Error, Result, Url};

/// Smallest part S3 accepts (except for the last one).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// Configuration of an S3 backend.
///
/// It holds no credentials, so its `Debug` output is safe to log; the endpoint is refused if
/// it carries a user name or password.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The bucket (the URL's host).
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (empty for the root).
    pub prefix: String,
    /// S3 endpoint URL for S3-compatible servers (`endpoint=`); AWS when absent.
    pub endpoint: Option<String>,
    /// Region (`region=`); otherwise `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Allow plain HTTP endpoints (`allow_http=true`).
    pub allow_http: bool,
    /// Virtual-hosted-style requests (`virtual_hosted_style=true`); path style by default.
    pub virtual_hosted_style: bool,
    /// How long a lease stays valid without renewal (`lease_ttl=30s`).
    pub lease_ttl: Duration,
    /// Send `x-amz-checksum-sha256` with every upload so the server verifies it
    /// (`checksum=sha256`, the default, or `checksum=none`).
    pub checksum: bool,
    /// First part size of multipart uploads in bytes (`part_size=8MiB`, at least 5 MiB).
    pub part_size: usize,
    /// Parts uploaded at once per layer (`upload_concurrency=2`).
    pub upload_concurrency: usize,
    /// Retries of one request on throttling, 5xx and timeouts (`max_retries=10`).
    pub max_retries: usize,
    /// Time budget for the retries of one request (`retry_timeout=3m`).
    pub retry_timeout: Duration,
    /// Per-request timeout (`timeout=5m`).
    pub timeout: Duration,
    /// Connect timeout (`connect_timeout=10s`).
    pub connect_timeout: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Field by field, so that a credential-bearing field added later does not leak by
        // default.
        f.debug_struct("Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("lease_ttl", &self.lease_ttl)
            .field("checksum", &self.checksum)
            .field("part_size", &self.part_size)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The options of `s3://` URLs, none of them secret (shown in messages; a URL in `endpoint`
/// is itself redacted).
pub const S3_OPTIONS: &[&str] = &[
    "endpoint",
    "region",
    "allow_http",
    "virtual_hosted_style",
    "lease_ttl",
    "checksum",
    "part_size",
    "upload_concurrency",
    "max_retries",
    "retry_timeout",
    "timeout",
    "connect_timeout",
];

impl Config {
    /// A configuration for `bucket` with every option at its default.
    pub fn new(bucket: impl Into<String>) -> Config {
        Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            allow_http: false,
            virtual_hosted_style: false,
            lease_ttl: Duration::from_secs(30),
            checksum: true,
            part_size: 8 << 20,
            upload_concurrency: 2,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Parses `s3://bucket/prefix?options`. Unknown options are refused, so a typo is reported
    /// rather than ignored; so are user names and passwords in the URL.
    pub fn from_url(url: &Url) -> Result<Config> {
        let shown = imagestore_core::redact::redact_options(url, S3_OPTIONS);
        if url.scheme() != "s3" {
            return Err(Error::invalid(format!("{shown} is not an s3:// URL")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::invalid(format!(
                "s3 URL {shown} carries credentials; set AWS_ACCESS_KEY_ID / \
                 AWS_SECRET_ACCESS_KEY (or use the AWS credential chain) instead"
            )));
        }
        if url.fragment().is_some() {
            return Err(Error::invalid(format!("s3 URL {shown} has a fragment")));
        }
        let bucket = url.host_str().unwrap_or_default().to_owned();
        check_bucket(&bucket)
            .map_err(|why| Error::invalid(format!("s3 URL {shown}: bucket {bucket:?} {why}")))?;
        let mut cfg = Config::new(bucket);
        let mut segments = Vec::new();
        for seg in url.path().split('/').filter(|s| !s.is_empty()) {
            if seg == "." || seg == ".." || !seg.bytes().all(is_key_byte) {
                return Err(Error::invalid(format!(
                    "s3 URL {shown}: prefix segment {seg:?} must be letters, digits, '.', '_', \
                     '-' or '%'-escapes, and not '.' or '..'"
                )));
            }
            segments.push(seg);
        }
        cfg.prefix = segments.join("/");
        for (k, v) in url.query_pairs() {
            let bad = |what: &str| {
                let v = imagestore_core::redact::option_value(&k, &v, S3_OPTIONS);
                Error::invalid(format!("s3 URL {shown}: option {k}={v:?}: {what}"))
            };
            match k.as_ref() {
                "endpoint" => {
                    let e = Url::parse(&v).map_err(|e| bad(&e.to_string()))?;
                    if !e.username().is_empty() || e.password().is_some() {
                        return Err(bad("the endpoint must not carry credentials"));
                    }
                    if !matches!(e.scheme(), "http" | "https") {
                        return Err(bad("the endpoint must be an http or https URL"));
                    }
                    cfg.endpoint = Some(v.trim_end_matches('/').to_owned());
                }
                "region" => cfg.region = Some(v.into_owned()),
                "allow_http" => {
                    cfg.allow_http = parse_bool(&v).ok_or_else(|| bad("not a boolean"))?
                }
                "virtual_hosted_style" => {
                    cfg.virtual_hosted_style = parse_bool(&v).ok_or_else(|| bad("not a boolean"))?
                }
                "lease_ttl" => {
                    cfg.lease_ttl = parse_duration(&v).map_err(|e| bad(&e))?;
                    if cfg.lease_ttl < Duration::from_secs(1) {
                        return Err(bad("must be at least 1s"));
                    }
                }
                "checksum" => {
                    cfg.checksum = match v.as_ref() {
                        "sha256" => true,
                        "none" => false,
                        _ => return Err(bad("expected sha256 or none")),
                    }
                }
                "part_size" => {
                    let n = parse_size(&v).map_err(|e| bad(&e))?;
                    if n < MIN_PART_SIZE as u64 || n > 1 << 30 {
                        return Err(bad("must be between 5MiB and 1GiB"));
                    }
                    cfg.part_size = n as usize;
                }
                "upload_concurrency" => {
                    cfg.upload_concurrency = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(|| bad("expected 1 to 16"))?;
                }
                "max_retries" => {
                    cfg.max_retries = v.parse().map_err(|_| bad("not a number"))?;
                }
                "retry_timeout" => cfg.retry_timeout = parse_duration(&v).map_err(|e| bad(&e))?,
                "timeout" => cfg.timeout = parse_duration(&v).map_err(|e| bad(&e))?,
                "connect_timeout" => {
                    cfg.connect_timeout = parse_duration(&v).map_err(|e| bad(&e))?
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "s3 URL {shown} has unknown option {k:?} (known: endpoint, region, \
                         allow_http, virtual_hosted_style, lease_ttl, checksum, part_size, \
                         upload_concurrency, max_retries, retry_timeout, timeout, \
                         connect_timeout)"
                    )));
                }
            }
        }
        if cfg
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http:"))
            && !cfg.allow_http
        {
            return Err(Error::invalid(format!(
                "s3 URL {shown}: a plain http endpoint needs allow_http=true"
            )));
        }
        Ok(cfg)
    }

    /// The backend's base URL: `s3://bucket/prefix`, without options.
    pub fn base_url(&self) -> Result<Url> {
        let s = if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        };
        Url::parse(&s).map_err(|e| Error::invalid(format!("{s}: {e}")))
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%')
}

fn check_bucket(b: &str) -> std::result::Result<(), &'static str> {
    if !(3..=63).contains(&b.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
    {
        return Err("may hold only lower-case letters, digits, '.' and '-'");
    }
    Ok(())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// `30s`, `500ms`, `2m`, or a plain number of seconds.
fn parse_duration(v: &str) -> std::result::Result<Duration, String> {
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| e.to_string())
}

/// `8MiB`, `16MB`, `5242880`.
fn parse_size(v: &str) -> std::result::Result<u64, String> {
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, m)| v.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((v, 1));
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "expected a size such as 8MiB".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Result<Url> {
        Url::parse(s).map_err(|e| Error::invalid(e.to_string()))
    }

    #[test]
    fn parses_bucket_prefix_and_options() -> Result<()> {
        let c = Config::from_url(&u(
            "s3://layers/a/b?endpoint=http://127.0.0.1:9000/&allow_http=true&region=eu-west-1&lease_ttl=5s&checksum=none&part_size=16MiB",
        )?)?;
        assert_eq!(c.bucket, "layers");
        assert_eq!(c.prefix, "a/b");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert!(c.allow_http && !c.checksum);
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.part_size, 16 << 20);
        assert_eq!(c.base_url()?.as_str(), "s3://layers/a/b");
        let root = Config::from_url(&u("s3://layers")?)?;
        assert_eq!(root.prefix, "");
        assert_eq!(root.base_url()?.as_str(), "s3://layers");
        Ok(())
    }

    #[test]
    fn refuses_credentials_typos_and_bad_names() -> Result<()> {
        for bad in [
            "s3://key:secret@layers/x",
            "s3://key@layers/x",
            "s3://layers/x?endpont=http://h",
            "s3://layers/x?endpoint=http://u:p@h",
            "s3://layers/x?endpoint=http://h",
            "s3://La/x",
            // (Dot segments never get here: the URL parser resolves `s3://b/../x` to `/x`.)
            "s3://layers/x/a:b",
            "s3://layers/x?part_size=1MiB",
            "s3://layers/x?lease_ttl=0s",
            "file:///x",
        ] {
            match Config::from_url(&u(bad)?) {
                Err(Error::InvalidArgument(msg)) => {
                    assert!(!msg.contains("secret"), "{msg}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn debug_shows_no_secrets() -> Result<()> {
        let c = Config::from_url(&u("s3://layers/p?region=r")?)?;
        let d = format!("{c:?}");
        assert!(d.contains("layers") && !d.to_lowercase().contains("secret"));
        Ok(())
    }
}
