//! The conformance suite against the remote backend (`imagestore+http://`), through a real
//! server: `imagestore_server` runs in this process on a loopback port (real TCP, its own
//! runtime) in front of
//!
//! * `file://` in a temporary directory (trials `file::…`, with the catalogue cases and the
//!   64 GiB sparse file the local suite runs too), and
//! * `s3://` on moto (trials `moto::…`), whose URL comes from `IMAGESTORE_TEST_S3_MOTO` as for
//!   the S3 suite (`cargo xtask conformance s3` starts it); under `CI=true` a missing server
//!   fails, elsewhere its trials are ignored.
//!
//! One more trial runs a round trip over HTTPS with a bearer token, through the server's own
//! listener, and checks what clients without the token or the CA get.
//!
//! Every case opens `imagestore+http://127.0.0.1:PORT` through the registry. The hooks reach
//! the served backend's storage with the local or S3 hooks. A sweep of crash leftovers runs
//! when a backend instance first uses a store, which on a server means after a restart: the
//! hooks' `leftovers` restarts the served backend for new connections (requests in flight
//! finish on the instance they started on), so a client opened afterwards meets an instance
//! that has not seen the store yet, as after a server restart.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod local_hooks;

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use async_trait::async_trait;
use axum::Router;
use axum::serve::IncomingStream;
use imagestore::{Error, Image, ImageId, Metadata, StoreName};
use imagestore_conformance::support::{Missing, Need};
use imagestore_conformance::tars::{Layer, read_all, stream, sum};
use imagestore_conformance::{Ctx, Hooks, case_trial, catalogue_trials, support, trials};
use imagestore_server::{AppState, ServeConfig, Server, TlsFiles, router};
use local_hooks::LocalHooks;
use tokio::net::TcpListener;

/// Hands each new connection the router of the current backend instance.
#[derive(Clone)]
struct Switch(Arc<Mutex<Router>>);

impl Switch {
    fn current(&self) -> Router {
        match self.0.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl<'a> tower::Service<IncomingStream<'a, TcpListener>> for Switch {
    type Response = Router;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Router, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: IncomingStream<'a, TcpListener>) -> Self::Future {
        std::future::ready(Ok(self.current()))
    }
}

/// Where the served backend's storage is, for the hooks.
#[derive(Clone)]
enum Storage {
    Local(PathBuf),
    S3(String),
}

/// A server in front of one backend.
struct Served {
    /// `imagestore+http://127.0.0.1:PORT`.
    url: String,
    /// The served backend's URL.
    backend: String,
    storage: Storage,
    /// `127.0.0.1:PORT`.
    host: String,
    switch: Switch,
    /// The server's runtime: backends are opened there, so that their connections live as
    /// long as the server.
    handle: tokio::runtime::Handle,
}

async fn routes_over(backend: String, host: String) -> Result<Router> {
    let storer = imagestore::open(&backend)
        .await
        .with_context(|| format!("opening the served backend {backend}"))?;
    Ok(router(AppState::new(storer, host)))
}

impl Served {
    /// Starts a server on `rt` in front of `backend`.
    fn start(rt: &tokio::runtime::Runtime, backend: String, storage: Storage) -> Result<Served> {
        let handle = rt.handle().clone();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let host = listener.local_addr()?.to_string();
            let routes = routes_over(backend.clone(), host.clone()).await?;
            let switch = Switch(Arc::new(Mutex::new(routes)));
            let serve = axum::serve(listener, switch.clone());
            tokio::spawn(async move {
                if let Err(e) = serve.await {
                    eprintln!("the test server stopped: {e}");
                }
            });
            Ok(Served {
                url: format!("imagestore+http://{host}"),
                backend,
                storage,
                host,
                switch,
                handle,
            })
        })
    }

    /// A fresh instance of the served backend for the connections accepted from now on, as
    /// after a restart of the server.
    async fn restart(&self) -> Result<()> {
        let routes = self
            .handle
            .spawn(routes_over(self.backend.clone(), self.host.clone()))
            .await??;
        match self.switch.0.lock() {
            Ok(mut r) => *r = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
        Ok(())
    }
}

/// The hooks of the served backend's storage; `leftovers` restarts the served backend first
/// (see the module's documentation).
struct RemoteHooks {
    inner: Box<dyn Hooks>,
    served: Arc<Served>,
}

#[async_trait]
impl Hooks for RemoteHooks {
    async fn leave_crashed_write(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        self.inner.leave_crashed_write(s, id).await
    }

    async fn leave_dangling_child(&self, s: &StoreName, p: &ImageId, c: &ImageId) -> Result<()> {
        self.inner.leave_dangling_child(s, p, c).await
    }

    async fn usage_file(&self, s: &StoreName) -> Result<PathBuf> {
        self.inner.usage_file(s).await
    }

    async fn leftovers(&self, s: &StoreName) -> Result<usize> {
        self.served.restart().await?;
        self.inner.leftovers(s).await
    }

    async fn fingerprint(&self, s: &StoreName) -> Result<String> {
        self.inner.fingerprint(s).await
    }

    async fn check_image(&self, s: &StoreName, image: &Image) -> Result<()> {
        self.inner.check_image(s, image).await
    }
}

/// The conformance context: the server opened by URL through the registry.
async fn ctx(served: Arc<Served>) -> Result<Ctx> {
    let inner: Box<dyn Hooks> = match &served.storage {
        Storage::Local(root) => Box::new(LocalHooks { root: root.clone() }),
        Storage::S3(url) => Box::new(common::S3Hooks::new(url)?),
    };
    let url = served.url.clone();
    Ctx::open(url, Arc::new(RemoteHooks { inner, served })).await
}

/// A layer refused at its first entry, with far more behind it than the connection buffers:
/// the server answers before reading the rest, and the client still gets the typed error.
async fn refusal_early_in_a_large_layer_keeps_its_error(ctx: Ctx) -> Result<()> {
    let s = ctx.new_store().await?;
    let scratch = ctx.store.get_image(&s, &ImageId::scratch()).await?;
    let layer = Layer::new()
        .hardlink("link", "missing")
        .file("big", &vec![1u8; 48 << 20])
        .build();
    let r = ctx
        .store
        .write_image(
            &scratch,
            &ImageId::new("refused")?,
            Metadata::new(),
            &sum(&layer),
            stream(&layer),
        )
        .await;
    anyhow::ensure!(matches!(r, Err(Error::BadArchive { .. })), "{r:?}");
    Ok(())
}

/// The token of [`https_with_a_token`]; no message may show it.
const TOKEN: &str = "remote-test-token-7f3a";

/// Over the server's own listener with TLS (a self-signed certificate) and a bearer token: a
/// client given the CA and the token works; one without the token or with a wrong one gets a
/// non-retryable refusal, one without the CA a retryable failure, and no message shows the
/// token.
async fn https_with_a_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name);
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    std::fs::write(path("cert.pem"), cert.pem())?;
    std::fs::write(path("key.pem"), signing_key.serialize_pem())?;
    std::fs::write(path("token"), format!("{TOKEN}\n"))?;
    std::fs::write(path("wrong"), format!("{TOKEN}-not"))?;
    let storer = imagestore::open(&format!("file://{}", path("root").display())).await?;
    let mut config = ServeConfig::new(storer);
    config.listen = "127.0.0.1:0".parse()?;
    config.tls = Some(TlsFiles {
        cert: path("cert.pem"),
        key: path("key.pem"),
    });
    config.token_file = Some(path("token"));
    let server = Server::bind(config).await?;
    let base = format!(
        "imagestore+https://localhost:{}",
        server.local_addr().port()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let ca = path("cert.pem").display().to_string();
    let with = |token: &str| format!("{base}?token_file={}&ca={ca}", path(token).display());

    let store = imagestore::open(&with("token")).await?;
    anyhow::ensure!(store.scheme() == "imagestore+https");
    let s = imagestore_conformance::unique("tls");
    store.create_image_store(&s).await?;
    let scratch = store.get_image(&s, &ImageId::scratch()).await?;
    let layer = Layer::new().file("a", b"over TLS").build();
    let image = store
        .write_image(
            &scratch,
            &ImageId::new("a")?,
            Metadata::new(),
            &sum(&layer),
            stream(&layer),
        )
        .await?;
    anyhow::ensure!(read_all(store.export_raw(&s, &image.id).await?).await? == layer);

    for url in [format!("{base}?ca={ca}"), with("wrong")] {
        let err = imagestore::open(&url)
            .await
            .err()
            .context("opened without the right token")?;
        let text = format!("{err} {err:?}");
        anyhow::ensure!(
            text.contains("401") && !err.is_retryable() && !text.contains(TOKEN),
            "{text}"
        );
    }
    let untrusted = imagestore::open(&format!("{base}?token_file={}", path("token").display()))
        .await
        .err()
        .context("trusted a self-signed certificate without its CA")?;
    let text = format!("{untrusted} {untrusted:?}");
    anyhow::ensure!(untrusted.is_retryable() && !text.contains(TOKEN), "{text}");

    let _ = stop.send(());
    running.await??;
    Ok(())
}

fn main() -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("test-server")
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let file = Arc::new(Served::start(
        &rt,
        format!("file://{}", root.display()),
        Storage::Local(root),
    )?);
    let moto: Need<Arc<Served>> =
        common::test_url("IMAGESTORE_TEST_S3_MOTO", &[("lease_ttl", "5s")]).and_then(|url| {
            Served::start(&rt, url.clone(), Storage::S3(url))
                .map(Arc::new)
                .map_err(|e| {
                    Missing::new(
                        format!(
                            "the server in front of IMAGESTORE_TEST_S3_MOTO did not start: {e:#}"
                        ),
                        common::START,
                    )
                })
        });

    let mut all = trials("file::", Ok(file.clone()), ctx);
    all.extend(catalogue_trials("file::", Ok(file.clone()), ctx));
    all.push(case_trial(
        "file::large_sparse_file_stays_sparse".to_owned(),
        Ok(file.clone()),
        ctx,
        |ctx| async move {
            imagestore_conformance::cases::large_sparse_file_stays_sparse(&ctx, 64 << 30).await
        },
    ));
    all.push(case_trial(
        "file::refusal_early_in_a_large_layer_keeps_its_error".to_owned(),
        Ok(file.clone()),
        ctx,
        refusal_early_in_a_large_layer_keeps_its_error,
    ));
    all.push(support::trial_async(
        "https_with_a_token",
        Ok(()),
        4,
        |()| https_with_a_token(),
    ));
    all.extend(trials("moto::", moto, ctx));
    let code = support::run(all);
    drop(rt);
    Ok(code)
}
