//! A small client of the OCI distribution API: manifests and blobs of one repository, with
//! Basic and Bearer-token authentication, and blob downloads that resume (HTTP `Range`) after
//! an interruption.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use imagestore_core::Digest;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::progress::{Event, Phase, Progress};
use crate::registry::auth::{Challenge, Credentials, parse_challenge};
use crate::registry::reference::Reference;
use crate::spec::{Descriptor, MAX_JSON, media};

/// How often a blob download is tried before giving up.
pub const MAX_ATTEMPTS: u32 = 5;

/// Most bytes of an error answer read for its error document; a longer body is not read on.
pub const MAX_ERROR_BODY: u64 = 64 << 10;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Speak plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Credentials for Basic auth and for the token endpoint.
    pub credentials: Option<Credentials>,
}

#[derive(Debug, Clone)]
enum AuthState {
    Anonymous,
    Basic,
    Bearer(String),
}

/// A blob download in progress.
struct Partial<'a> {
    file: tokio::fs::File,
    dest: &'a Path,
    hasher: imagestore_core::digest::Hasher,
    have: u64,
}

/// A client for one repository of one registry.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    auth: Mutex<AuthState>,
}

/// The error document registries send with 4xx answers.
#[derive(Debug, Deserialize)]
struct ErrorDoc {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct TokenDoc {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// What a manifest request returned.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body, byte for byte.
    pub bytes: Vec<u8>,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The sha256 of the body.
    pub digest: Digest,
}

impl Client {
    /// A client for `reference`'s repository.
    pub fn new(reference: &Reference, options: &ClientOptions) -> Result<Client> {
        imagestore_core::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("imagestore/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Registry {
                registry: reference.registry.clone(),
                message: format!("setting up the HTTP client: {e}"),
                status: None,
                retryable: false,
            })?;
        let scheme = if options.insecure { "http" } else { "https" };
        Ok(Client {
            http,
            base: format!("{scheme}://{}", reference.api_host()),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            credentials: options.credentials.clone(),
            auth: Mutex::new(AuthState::Anonymous),
        })
    }

    pub(crate) fn err(
        &self,
        message: String,
        status: Option<StatusCode>,
        retryable: bool,
    ) -> Error {
        Error::Registry {
            registry: self.registry.clone(),
            message,
            status: status.map(|s| s.as_u16()),
            retryable,
        }
    }

    fn net_err(&self, what: &str, e: &reqwest::Error) -> Error {
        // reqwest's messages carry the URL, which never holds credentials here.
        let mut msg = format!("{what}: {e}");
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        self.err(msg, e.status(), true)
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let mut url = url::Url::parse(realm).map_err(|e| Error::Auth {
            registry: self.registry.clone(),
            message: format!("token realm {realm:?} is not a URL: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url.clone());
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(c.password()));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.net_err(&format!("token request to {realm}"), &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::Auth {
                registry: self.registry.clone(),
                message: format!(
                    "token endpoint {realm} answered {status}{}",
                    if self.credentials.is_some() {
                        " (credentials refused?)"
                    } else {
                        " (pass --username and --password-stdin?)"
                    }
                ),
            });
        }
        let body = self
            .read_limited(resp, &format!("token response from {realm}"), MAX_JSON)
            .await?;
        let doc: TokenDoc = serde_json::from_slice(&body).map_err(|e| Error::Auth {
            registry: self.registry.clone(),
            message: format!("token response from {realm} is not JSON: {e}"),
        })?;
        doc.token
            .or(doc.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Auth {
                registry: self.registry.clone(),
                message: format!("token response from {realm} holds no token"),
            })
    }

    /// Sends a GET to `path` (below the registry), authenticating on a 401 challenge, and
    /// returns any answer but 401.
    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        from: Option<u64>,
    ) -> Result<reqwest::Response> {
        self.send(Method::GET, path, &|mut req| {
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(n) = from {
                req = req.header(RANGE, format!("bytes={n}-"));
            }
            req
        })
        .await
    }

    /// The URL of `target`: a path below the registry, or an absolute URL (a `Location`)
    /// returned as it is.
    pub(crate) fn url(&self, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            target.to_owned()
        } else {
            format!("{}{target}", self.base)
        }
    }

    /// `target` without the query (which may hold an upload's state), for messages.
    fn shown(target: &str) -> &str {
        target.split('?').next().unwrap_or(target)
    }

    /// Adds the authorization the client holds now to `req`.
    async fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let state = self.auth.lock().await.clone();
        match (&state, &self.credentials) {
            (AuthState::Bearer(t), _) => req.bearer_auth(t),
            (AuthState::Basic, Some(c)) => req.basic_auth(&c.username, Some(c.password())),
            _ => req,
        }
    }

    /// Sends a `method` request to `target` (a path below the registry or an absolute URL),
    /// built by `build` (which may be called twice, so any body must be reusable),
    /// authenticating on a 401 challenge, and returns any answer but 401.
    pub(crate) async fn send(
        &self,
        method: Method,
        target: &str,
        build: &(dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync),
    ) -> Result<reqwest::Response> {
        let url = self.url(target);
        let path = Self::shown(target);
        for round in 0..2 {
            let req = build(self.http.request(method.clone(), &url));
            let req = self.authorize(req).await;
            let resp = req
                .send()
                .await
                .map_err(|e| self.net_err(&format!("{method} {path}"), &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            if round > 0 {
                return Err(Error::Auth {
                    registry: self.registry.clone(),
                    message: format!(
                        "{method} {path} answered 401 Unauthorized{}",
                        if self.credentials.is_some() {
                            " with the credentials given"
                        } else {
                            "; pass --username and --password-stdin"
                        }
                    ),
                });
            }
            let next = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let access = if method == Method::GET || method == Method::HEAD {
                        "pull"
                    } else {
                        "pull,push"
                    };
                    let scope =
                        scope.unwrap_or_else(|| format!("repository:{}:{access}", self.repository));
                    AuthState::Bearer(self.fetch_token(&realm, service.as_deref(), &scope).await?)
                }
                Some(Challenge::Basic) if self.credentials.is_some() => AuthState::Basic,
                Some(Challenge::Basic) => {
                    return Err(Error::Auth {
                        registry: self.registry.clone(),
                        message: "the registry asks for a user name and password; \
                                  pass --username and --password-stdin"
                            .into(),
                    });
                }
                None => {
                    return Err(Error::Auth {
                        registry: self.registry.clone(),
                        message: format!(
                            "{method} {path} answered 401 without a Basic or Bearer challenge"
                        ),
                    });
                }
            };
            *self.auth.lock().await = next;
        }
        Err(self.err(format!("{method} {path}: authentication loop"), None, false))
    }

    /// Sends a request whose body can be sent only once (a stream) with the authorization
    /// the client holds now; a 401 is an authentication error, not a new challenge. Callers
    /// make an authenticated request to the same repository first.
    pub(crate) async fn send_once(
        &self,
        method: Method,
        target: &str,
        req: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let path = Self::shown(target);
        let built = req(self.http.request(method.clone(), self.url(target)));
        let resp = self
            .authorize(built)
            .await
            .send()
            .await
            .map_err(|e| self.net_err(&format!("{method} {path}"), &e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Auth {
                registry: self.registry.clone(),
                message: format!("{method} {path} answered 401 Unauthorized"),
            });
        }
        Ok(resp)
    }

    /// The registry this client speaks to (`host[:port]`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository this client speaks to.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Turns a non-success answer into an error naming `what`.
    pub(crate) async fn check(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // The error document is a courtesy: a body too long, or cut, is not read on.
        let body = self
            .read_limited(resp, what, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let detail = serde_json::from_slice::<ErrorDoc>(&body)
            .ok()
            .and_then(|d| d.errors.into_iter().next())
            .map(|e| format!(" ({}: {})", e.code, e.message))
            .unwrap_or_default();
        if status == StatusCode::NOT_FOUND {
            return Err(Error::NotFound(format!(
                "{what} not found in {}/{}{detail}",
                self.registry, self.repository
            )));
        }
        let retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        Err(self.err(format!("{what}: {status}{detail}"), Some(status), retryable))
    }

    /// Reads a body of at most `max` bytes.
    pub(crate) async fn read_limited(
        &self,
        mut resp: reqwest::Response,
        what: &str,
        max: u64,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.net_err(what, &e))? {
            if (out.len() + chunk.len()) as u64 > max {
                return Err(self.err(format!("{what}: larger than {max} bytes"), None, false));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Fetches the manifest (or index) `reference` (a tag or a digest).
    pub async fn manifest(&self, reference: &str) -> Result<Fetched> {
        let path = format!("/v2/{}/manifests/{reference}", self.repository);
        let what = format!("manifest {reference}");
        let resp = self.get(&path, Some(media::MANIFEST_ACCEPT), None).await?;
        let resp = self.check(resp, &what).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self.read_limited(resp, &what, MAX_JSON).await?;
        let digest = Digest::sha256_of(&bytes);
        Ok(Fetched {
            bytes,
            content_type,
            digest,
        })
    }

    /// Fetches a small blob (a config) and checks its digest and size.
    pub async fn small_blob(&self, d: &Descriptor, what: &str) -> Result<Vec<u8>> {
        if d.size > MAX_JSON {
            return Err(Error::invalid(
                what,
                format!("{} bytes is too large", d.size),
            ));
        }
        let path = format!("/v2/{}/blobs/{}", self.repository, d.digest);
        let resp = self.get(&path, None, None).await?;
        let resp = self.check(resp, what).await?;
        let bytes = self.read_limited(resp, what, MAX_JSON).await?;
        crate::source::layout::check_blob(&bytes, d, what)?;
        Ok(bytes)
    }

    /// One attempt at downloading the rest of a blob into `part`, from byte `part.have`.
    async fn download_once(
        &self,
        d: &Descriptor,
        part: &mut Partial<'_>,
        progress: &Arc<dyn Progress>,
        layer: usize,
    ) -> Result<()> {
        let Partial {
            file,
            dest,
            hasher,
            have,
        } = part;
        let dest: &Path = dest;
        let path = format!("/v2/{}/blobs/{}", self.repository, d.digest);
        let what = format!("blob {}", d.digest);
        let resume = (*have > 0).then_some(*have);
        let resp = self.get(&path, None, resume).await?;
        let resp = self.check(resp, &what).await?;
        let restart = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(*have) {
                    return Err(self.err(
                        format!("{what}: the registry resumed at {start:?}, not at {have}"),
                        None,
                        false,
                    ));
                }
                false
            }
            _ => *have > 0,
        };
        if restart {
            // The server ignored the range: start over.
            file.set_len(0).await.map_err(|e| Error::io(dest, e))?;
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| Error::io(dest, e))?;
            *hasher = d.digest.algorithm().hasher();
            *have = 0;
        }
        let mut resp = resp;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(self.net_err(&format!("{what} after {have} bytes"), &e));
                }
            };
            if *have + chunk.len() as u64 > d.size {
                return Err(self.err(
                    format!("{what}: more than the {} bytes announced", d.size),
                    None,
                    false,
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(dest, e))?;
            hasher.update(&chunk);
            *have += chunk.len() as u64;
            if progress.wants_bytes() {
                progress.event(Event::Advance {
                    layer,
                    phase: Phase::Download,
                    bytes: chunk.len() as u64,
                });
            }
        }
        if *have < d.size {
            return Err(self.err(
                format!(
                    "{what}: the connection ended after {have} of {} bytes",
                    d.size
                ),
                None,
                true,
            ));
        }
        Ok(())
    }

    /// Downloads blob `d` into `dest`, resuming after interruptions (up to
    /// [`MAX_ATTEMPTS`] attempts), and checks its size and digest.
    pub async fn download(
        &self,
        d: &Descriptor,
        dest: &Path,
        progress: &Arc<dyn Progress>,
        layer: usize,
    ) -> Result<()> {
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| Error::io(dest, e))?;
        let mut part = Partial {
            file,
            dest,
            hasher: d.digest.algorithm().hasher(),
            have: 0,
        };
        let mut attempt = 1;
        loop {
            match self.download_once(d, &mut part, progress, layer).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() && attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(layer, attempt, error = %e, "retrying download");
                    progress.event(Event::Retry {
                        layer,
                        attempt,
                        resume_from: part.have,
                        reason: e.to_string(),
                    });
                    tokio::time::sleep(Duration::from_millis(250 << (attempt - 2))).await;
                }
                Err(e) => return Err(e),
            }
        }
        part.file.flush().await.map_err(|e| Error::io(dest, e))?;
        let actual = part.hasher.finish();
        if actual != d.digest {
            return Err(Error::DigestMismatch {
                what: format!("layer {layer} blob downloaded from {}", self.registry),
                expected: d.digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// What a hostile registry announces and would send: 1 GiB.
    const HUGE: u64 = 1 << 30;

    /// A loopback registry whose error answers and token endpoint send [`HUGE`] bodies;
    /// returns its address and the bytes it got to send.
    fn hostile_registry() -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let (realm, counter) = (format!("http://{addr}/token"), Arc::clone(&sent));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (realm, counter) = (realm.clone(), Arc::clone(&counter));
                std::thread::spawn(move || {
                    let mut head = String::new();
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
                    let answer = if head.contains("/manifests/needs-token") {
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer \
                             realm=\"{realm}\",service=\"t\"\r\nContent-Length: 0\r\n\
                             Connection: close\r\n\r\n"
                        )
                    } else if head.starts_with("GET /token") {
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n")
                    } else {
                        format!("HTTP/1.1 404 Not Found\r\nContent-Length: {HUGE}\r\n\r\n")
                    };
                    if conn.write_all(answer.as_bytes()).is_err() || answer.contains(" 401 ") {
                        return;
                    }
                    let chunk = vec![b' '; 64 << 10];
                    let mut n = 0;
                    while n < HUGE && conn.write_all(&chunk).is_ok() {
                        n += chunk.len() as u64;
                        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        (addr, sent)
    }

    /// Neither an error document nor a token response is read past its bound, however long
    /// the body the registry announces.
    #[tokio::test(flavor = "multi_thread")]
    async fn answers_from_a_registry_are_read_within_bounds() -> Result<()> {
        let (addr, sent) = hostile_registry();
        let reference = Reference::parse(&format!("{addr}/r:latest"))?;
        let options = ClientOptions {
            insecure: true,
            credentials: None,
        };
        let bound = 64 << 20;

        let client = Client::new(&reference, &options)?;
        let e = client.manifest("latest").await.expect_err("404");
        assert!(
            matches!(e, Error::NotFound(ref m) if m.contains("manifest latest")),
            "{e}"
        );
        assert!(sent.load(Ordering::Relaxed) < bound, "{sent:?} bytes sent");

        let client = Client::new(&reference, &options)?;
        let e = client.manifest("needs-token").await.expect_err("token");
        assert!(
            matches!(e, Error::Registry { ref message, .. }
                if message.contains("token response") && message.contains("larger than")),
            "{e}"
        );
        assert!(
            sent.load(Ordering::Relaxed) < 2 * bound,
            "{sent:?} bytes sent"
        );
        Ok(())
    }
}
