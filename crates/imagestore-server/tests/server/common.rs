//! Starting a server over a fresh `file://` store, and the helpers every test uses.

use std::net::SocketAddr;

use imagestore_core::wire::ErrorBody;
use imagestore_server::{ServeConfig, ServeError, Server};
use sha2::Digest as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and a client for it.
pub struct Srv {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub store_url: String,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

pub async fn start() -> Srv {
    start_with(|_, _| {}).await
}

/// A server whose configuration `f` adjusts (given the temporary directory).
pub async fn start_with(f: impl FnOnce(&mut ServeConfig, &std::path::Path)) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", dir.path().join("store").display());
    let storer = imagestore::open(&store_url).await.unwrap();
    let mut cfg = ServeConfig::new(storer);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.redact = vec![store_url.clone(), dir.path().display().to_string()];
    f(&mut cfg, dir.path());
    let tls = cfg.tls.is_some();
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let base = if tls {
        format!("https://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    // Every test builds its clients after this (reqwest's rustls needs the provider).
    imagestore_core::tls::install_crypto_provider();
    Srv {
        addr,
        base,
        client: reqwest::Client::new(),
        store_url,
        dir,
        stop: Some(tx),
        task: Some(task),
    }
}

impl Srv {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// Writes layer `tar` as image `id` on `parent` of store `store`.
    pub async fn write(
        &self,
        store: &str,
        id: &str,
        parent: &str,
        tar: Vec<u8>,
    ) -> reqwest::Response {
        let sum = sha(&tar);
        self.client
            .put(self.url(&format!(
                "/v1/stores/{store}/images/{id}?parent={parent}&sum={sum}"
            )))
            .header("Imagestore-Metadata-Length", "0")
            .body(tar)
            .send()
            .await
            .unwrap()
    }

    /// Signals shutdown and waits for the server to end.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap(),
            None => Ok(()),
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_stop(&mut self) -> JoinHandle<Result<(), ServeError>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap()
    }
}

/// `sha256:<hex>` of `b`.
pub fn sha(b: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

/// A tar of regular files.
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The names in a tar, directories without their trailing slash.
pub fn names(tar_bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

/// Asserts that `resp` failed with `status` and an error body of `kind`, and returns it.
pub async fn expect_err(resp: reqwest::Response, status: u16, kind: Option<&str>) -> ErrorBody {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body.code, status, "{text}");
    assert_eq!(body.kind.as_deref(), kind, "{text}");
    body
}

/// Asserts `resp` has `status` and returns its JSON body.
pub async fn expect_json(resp: reqwest::Response, status: u16) -> serde_json::Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Asserts `resp` has `status` and an empty body.
pub async fn expect_empty(resp: reqwest::Response, status: u16) {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    assert!(text.is_empty(), "{text}");
}
