//! `imagestore serve`: the store over HTTP until SIGTERM or ctrl-c.

use std::sync::Arc;

use anyhow::{Context, Result};
use imagestore::ImageStorer;
use imagestore_server::{ServeConfig, Server, TlsFiles};

use crate::args::ServeArgs;

/// What errors never show of `url`: the URL itself and, for a `file:` URL, its directory.
fn hidden(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    if let Ok(u) = imagestore::Url::parse(url)
        && u.scheme() == "file"
        && let Ok(p) = u.to_file_path()
    {
        out.push(p.display().to_string());
    }
    out
}

/// Serves `store` (opened from `url`) as `args` say.
pub async fn run(store: Arc<dyn ImageStorer>, url: &str, args: &ServeArgs) -> Result<()> {
    let mut config = ServeConfig::new(store);
    config.listen = args.listen;
    config.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    config.token_file = args.token_file.clone();
    config.client_ca = args.client_ca.clone();
    config.insecure = args.insecure;
    config.shutdown_timeout = args.shutdown_timeout;
    config.redact = hidden(url);
    let server = Server::bind(config).await?;
    let scheme = if server.is_tls() { "https" } else { "http" };
    println!("listening on {scheme}://{}", server.local_addr());
    server.run(shutdown_signal()).await.context("serving")?;
    Ok(())
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
