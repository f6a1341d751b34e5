//! Serving [`crate::router`] on a listener: plain TCP or rustls TLS (optionally verifying
//! client certificates), the connection limits, the secure-by-default check on the listen
//! address, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use imagestore_core::ImageStorer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::stall::StallGuard;
use crate::{AppState, Redactor, Token};

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The backend served.
    pub storer: Arc<dyn ImageStorer>,
    /// The address to listen on; port 0 picks a free one ([`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Serve TLS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Require `Authorization: Bearer <the file's content>` on every route but `/healthz`.
    pub token_file: Option<PathBuf>,
    /// Require client certificates signed by one of this file's CA certificates (TLS only).
    pub client_ca: Option<PathBuf>,
    /// Allow a non-loopback listener without TLS and authentication.
    pub insecure: bool,
    /// How long in-flight requests may take to finish once shutdown begins; then their
    /// connections are closed (and their operations cancelled).
    pub shutdown_timeout: Duration,
    /// Most connections served at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's head, and a TLS handshake.
    pub header_timeout: Duration,
    /// How long a request body may send nothing before the request fails.
    pub body_idle_timeout: Duration,
    /// How long a client may read nothing of a response before its connection is closed.
    pub write_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// The host name (`host:port`) VIC's links name; by default the bound address.
    pub host: Option<String>,
    /// Strings no error shows (the store URL, its root directory).
    pub redact: Vec<String>,
}

impl ServeConfig {
    /// Serving `storer` on the default address (`127.0.0.1:8080`) with the default limits,
    /// without TLS or authentication.
    pub fn new(storer: Arc<dyn ImageStorer>) -> ServeConfig {
        ServeConfig {
            storer,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            token_file: None,
            client_ca: None,
            insecure: false,
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: crate::layers::DEFAULT_BODY_IDLE,
            write_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            host: None,
            redact: Vec::new(),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is unsafe or inconsistent.
    #[error("{0}")]
    Config(String),
    /// A TLS, token or CA file could not be read or used.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The listener could not be bound or failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    config: ServeConfig,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Checks `config` and binds its listener. A non-loopback address is refused unless TLS
    /// and a token or client CA are configured, or `insecure` is set.
    pub async fn bind(config: ServeConfig) -> Result<Server, ServeError> {
        check_exposure(&config)?;
        let token = match &config.token_file {
            Some(p) => Some(read_token(p)?),
            None => None,
        };
        let tls = match &config.tls {
            Some(files) => Some(tls_acceptor(files, config.client_ca.as_deref())?),
            None => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        let host = config.host.clone().unwrap_or_else(|| addr.to_string());
        let state = AppState::new(config.storer.clone(), host)
            .with_token(token)
            .with_redactor(Redactor::new(config.redact.iter().cloned()))
            .with_body_idle_timeout(config.body_idle_timeout);
        Ok(Server {
            listener,
            addr,
            app: crate::router(state),
            tls,
            config,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// True if the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
    /// finish within [`ServeConfig::shutdown_timeout`] and closes the connections still open
    /// (cancelling their operations: an upload cut there leaves nothing).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Server {
            listener,
            app,
            tls,
            config,
            ..
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(config.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        let graceful = GracefulShutdown::new();
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while conns.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                app: app.clone(),
                tls: tls.clone(),
                builder: builder.clone(),
                handshake_timeout: config.header_timeout,
                write_timeout: config.write_timeout,
            };
            let watcher = graceful.watcher();
            conns.spawn(async move {
                let _permit = permit;
                conn.serve(stream, peer, watcher).await;
            });
        }
        drop(listener);
        tracing::info!(
            connections = conns.len(),
            "shutting down: draining connections"
        );
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(config.shutdown_timeout) => {
                tracing::warn!(
                    open = conns.len(),
                    "shutdown deadline reached: closing the connections still open"
                );
            }
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        Ok(())
    }
}

/// Binds `config` and serves until `shutdown` (see [`Server::run`]).
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let server = Server::bind(config).await?;
    tracing::info!(addr = %server.local_addr(), tls = server.is_tls(), "listening");
    server.run(shutdown).await
}

/// One accepted connection.
struct Connection {
    app: Router,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    write_timeout: Duration,
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let app = self.app;
        let stream = StallGuard::new(stream, self.write_timeout);
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        match self.tls {
            None => {
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(peer = %peer, error = %e, "connection ended");
                }
            }
            Some(acceptor) => {
                let tls =
                    match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(peer = %peer, error = %e, "connection ended");
                }
            }
        }
    }
}

/// Refuses a listener other hosts can reach unless it is protected, or the caller said
/// `insecure`.
fn check_exposure(config: &ServeConfig) -> Result<(), ServeError> {
    if config.client_ca.is_some() && config.tls.is_none() {
        return Err(ServeError::Config(
            "client certificates (--client-ca) need TLS (--tls-cert and --tls-key)".into(),
        ));
    }
    if config.listen.ip().is_loopback() || config.insecure {
        return Ok(());
    }
    let authenticated = config.token_file.is_some() || config.client_ca.is_some();
    if config.tls.is_some() && authenticated {
        return Ok(());
    }
    Err(ServeError::Config(format!(
        "refusing to listen on {}, which other hosts can reach, without TLS (--tls-cert and \
         --tls-key) and authentication (--token-file or --client-ca); pass --insecure to do \
         it anyway",
        config.listen
    )))
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> ServeError {
    ServeError::File {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_token(path: &Path) -> Result<Token, ServeError> {
    let bytes = std::fs::read(path).map_err(|e| file_error("token file", path, e))?;
    Token::new(&bytes).ok_or_else(|| file_error("token file", path, "is empty"))
}

fn tls_acceptor(files: &TlsFiles, client_ca: Option<&Path>) -> Result<TlsAcceptor, ServeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error("certificate file", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("certificate file", &files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "certificate file",
            &files.cert,
            "holds no certificate",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error("key file", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Config(format!("TLS: {e}")))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| file_error("client CA file", ca, e))?
            {
                let cert = cert.map_err(|e| file_error("client CA file", ca, e))?;
                roots
                    .add(cert)
                    .map_err(|e| file_error("client CA file", ca, e))?;
            }
            if roots.is_empty() {
                return Err(file_error("client CA file", ca, "holds no certificate"));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| file_error("client CA file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error("certificate file", &files.cert, e))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}
