//! Bearer tokens, the refusal of an exposed listener without protection, TLS and redaction.

use std::sync::Arc;

use imagestore_server::{ServeConfig, ServeError, Server, TlsFiles};

use crate::common::{expect_err, start_with};

#[tokio::test]
async fn a_token_is_required_everywhere_but_healthz() {
    let s = start_with(|c, dir| {
        let f = dir.join("token");
        std::fs::write(&f, "s3cret-token\n").unwrap();
        c.token_file = Some(f);
    })
    .await;
    expect_err(s.get("/v1/stores").await, 401, None).await;
    expect_err(s.get("/metrics").await, 401, None).await;
    let wrong = s
        .client
        .get(s.url("/v1/stores"))
        .bearer_auth("s3cret-tokem")
        .send()
        .await
        .unwrap();
    let body = expect_err(wrong, 401, None).await;
    assert!(!body.message.contains("s3cret"));
    let short = s
        .client
        .get(s.url("/v1/stores"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    expect_err(short, 401, None).await;
    let right = s
        .client
        .get(s.url("/v1/stores"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let lower = s
        .client
        .get(s.url("/v1/stores"))
        .header("authorization", "bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200, "the scheme is case-insensitive");
    assert_eq!(s.get("/healthz").await.status(), 200);
    s.stop().await.unwrap();
}

async fn storer(dir: &std::path::Path) -> Arc<dyn imagestore_core::ImageStorer> {
    imagestore::open(&format!("file://{}", dir.join("store").display()))
        .await
        .unwrap()
}

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn self_signed(dir: &std::path::Path) -> (TlsFiles, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, signing_key.serialize_pem()).unwrap();
    (files, cert.pem())
}

#[tokio::test]
async fn an_exposed_listener_needs_tls_and_authentication_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let store = storer(dir.path()).await;
    let (tls, _) = self_signed(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let exposed = |f: &dyn Fn(&mut ServeConfig)| {
        let mut c = ServeConfig::new(store.clone());
        c.listen = "0.0.0.0:0".parse().unwrap();
        f(&mut c);
        c
    };
    for refused in [
        exposed(&|_| {}),
        exposed(&|c| c.tls = Some(tls.clone())),
        exposed(&|c| c.token_file = Some(token.clone())),
    ] {
        let err = Server::bind(refused).await.unwrap_err();
        assert!(matches!(err, ServeError::Config(_)), "{err}");
        assert!(err.to_string().contains("--insecure"), "{err}");
    }
    let err = Server::bind(exposed(&|c| c.client_ca = Some(token.clone())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("need TLS"), "{err}");
    for allowed in [
        exposed(&|c| c.insecure = true),
        exposed(&|c| {
            c.tls = Some(tls.clone());
            c.token_file = Some(token.clone());
        }),
    ] {
        let server = Server::bind(allowed).await.unwrap();
        assert!(!server.local_addr().ip().is_loopback());
    }
    // The default address is loopback.
    assert!(ServeConfig::new(store).listen.ip().is_loopback());
}

#[tokio::test]
async fn tls_with_a_token_serves_https_only() {
    let mut pem = String::new();
    let s = start_with(|c, dir| {
        let (files, cert) = self_signed(dir);
        pem = cert;
        c.tls = Some(files);
        let f = dir.join("token");
        std::fs::write(&f, "tok").unwrap();
        c.token_file = Some(f);
    })
    .await;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let resp = client
        .get(s.url("/v1/info"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let denied = client.get(s.url("/v1/info")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn client_certificates_signed_by_the_ca_are_required() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let identity = format!("{}{}", client_cert.pem(), client_key.serialize_pem());

    let mut server_pem = String::new();
    let s = start_with(|c, dir| {
        let (files, cert) = self_signed(dir);
        server_pem = cert;
        c.tls = Some(files);
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        c.client_ca = Some(ca_file);
    })
    .await;
    let trust = || reqwest::Certificate::from_pem(server_pem.as_bytes()).unwrap();
    let with_cert = reqwest::Client::builder()
        .tls_certs_only([trust()])
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = with_cert.get(s.url("/v1/stores")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let without = reqwest::Client::builder()
        .tls_certs_only([trust()])
        .build()
        .unwrap();
    let refused = without.get(s.url("/v1/stores")).send().await;
    assert!(refused.is_err(), "{refused:?}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn errors_never_show_the_stores_host_paths() {
    let s = crate::common::start().await;
    let root = s.dir.path().to_str().unwrap().to_owned();
    crate::common::expect_json(s.put("/v1/stores/s", "").await, 201).await;
    // The backend's message names the store's root URL; the answer must not.
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("url", "file:///elsewhere/secret/dir")
        .finish();
    let body = expect_err(
        s.get(&format!("/v1/owners?{q}")).await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    let text = serde_json::to_string(&body).unwrap();
    assert!(!text.contains(&root), "{text}");
    assert!(!text.contains("/elsewhere/secret"), "{text}");
    assert!(text.contains("is not an image URL"), "{text}");
    s.stop().await.unwrap();
}
