//! Health, readiness, metrics, VIC's Op-ID rule and graceful shutdown.

use std::time::Duration;

use crate::common::{expect_err, expect_json, sha, start, start_with, tar_of};

#[tokio::test]
async fn health_and_readiness() {
    let s = start().await;
    let h = s.get("/healthz").await;
    assert_eq!(h.status(), 200);
    assert_eq!(h.text().await.unwrap(), "ok\n");
    let r = s.get("/readyz").await;
    assert_eq!(r.status(), 200);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn op_ids_follow_vics_rule() {
    let s = start().await;
    for bad in ["abc", "1.", "."] {
        let resp = s
            .client
            .get(s.url("/v1/stores"))
            .header("Op-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": 605, "message": "Op-ID in header should match '[0-9]+\\.[0-9]+'"})
        );
    }
    for good in ["12.34", "x1.2y", ""] {
        let resp = s
            .client
            .get(s.url("/v1/stores"))
            .header("Op-ID", good)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{good:?}");
        let echoed = resp.headers()["op-id"].to_str().unwrap().to_owned();
        if good.is_empty() {
            assert!(echoed.contains('.'), "a fresh id: {echoed}");
        } else {
            assert_eq!(echoed, good);
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_requests_errors_bytes_and_usage() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let layer = tar_of(&[("f", b"hello")]);
    expect_json(s.write("s", "a", "scratch", layer.clone()).await, 201).await;
    expect_err(
        s.get("/v1/stores/s/images/nope").await,
        404,
        Some("NotFound"),
    )
    .await;
    let text = s.get("/metrics").await.text().await.unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(
            "imagestore_http_requests_total{method=\"PUT\",route=\"/v1/stores/{store}\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(
        has(
            "imagestore_http_requests_total{method=\"GET\",route=\"/v1/stores/{store}/images/{id}\",status=\"404\"} 1"
        ),
        "{text}"
    );
    assert!(
        has("imagestore_http_errors_total{kind=\"NotFound\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("imagestore_http_request_duration_seconds_count{route=\"/v1/stores/{store}/images/{id}\"} 2"),
        "{text}"
    );
    let bytes_in: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("imagestore_http_request_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes_in >= layer.len() as u64, "{text}");
    let usage = text
        .lines()
        .find_map(|l| l.strip_prefix("imagestore_store_usage_bytes{store=\"s\"} "))
        .unwrap();
    assert!(usage.parse::<u64>().unwrap() > 0, "{text}");
    s.stop().await.unwrap();
}

/// Sends `tar` as an upload in two halves, the second when `go` fires.
fn two_part_body(tar: Vec<u8>, go: tokio::sync::oneshot::Receiver<()>) -> reqwest::Body {
    let half = tar.len() / 2;
    let first = tar[..half].to_vec();
    let second = tar[half..].to_vec();
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures::stream::once(async move {
            let _ = go.await;
            Ok(second)
        }),
    );
    reqwest::Body::wrap_stream(stream)
}

use futures::StreamExt as _;

#[tokio::test]
async fn shutdown_drains_a_request_in_flight() {
    let mut s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let tar = tar_of(&[("f", &[1u8; 300_000])]);
    let sum = sha(&tar);
    let (go, wait) = tokio::sync::oneshot::channel();
    let upload = {
        let req = s
            .client
            .put(s.url(&format!("/v1/stores/s/images/a?parent=scratch&sum={sum}")))
            .body(two_part_body(tar, wait));
        tokio::spawn(req.send())
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = s.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connection is taken once shutdown began.
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err()
            || reqwest::Client::new()
                .get(s.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_err()
    );
    go.send(()).unwrap();
    let resp = upload.await.unwrap().unwrap();
    let img = expect_json(resp, 201).await;
    assert_eq!(img["sum"], sum);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_upload_cut_at_the_shutdown_deadline_leaves_nothing() {
    let mut s = start_with(|c, _| c.shutdown_timeout = Duration::from_millis(300)).await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let tar = tar_of(&[("f", &[1u8; 300_000])]);
    let sum = sha(&tar);
    let (_never, wait) = tokio::sync::oneshot::channel::<()>();
    let upload = {
        let req = s
            .client
            .put(s.url(&format!("/v1/stores/s/images/a?parent=scratch&sum={sum}")))
            .body(two_part_body(tar.clone(), wait));
        tokio::spawn(req.send())
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    s.begin_stop().await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(upload.await.unwrap().is_err(), "the upload was cut");
    let store = imagestore::open(&s.store_url).await.unwrap();
    let name = imagestore_core::StoreName::new("s").unwrap();
    let id = imagestore_core::ImageId::new("a").unwrap();
    let err = store.get_image(&name, &id).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let parent = store
        .get_image(&name, &imagestore_core::ImageId::scratch())
        .await
        .unwrap();
    use imagestore_core::ImageStorerExt as _;
    store
        .write_image_bytes(&parent, &id, Default::default(), tar)
        .await
        .unwrap();
}

#[tokio::test]
async fn connection_and_header_limits_hold() {
    let s = start_with(|c, _| {
        c.max_connections = 1;
        c.max_header_bytes = 16 << 10;
    })
    .await;
    // A header past the limit is refused.
    let resp = s
        .client
        .get(s.url("/healthz"))
        .header("x-big", "a".repeat(64 << 10))
        .send()
        .await;
    assert!(
        resp.as_ref().is_err() || resp.as_ref().unwrap().status() == 431,
        "{resp:?}"
    );
    // Wait for that connection to be gone, then hold the only one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = reqwest::Client::new()
        .get(s.url("/healthz"))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(waiting.is_err(), "a second connection waits: {waiting:?}");
    drop(held);
    let served = reqwest::Client::new()
        .get(s.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    s.stop().await.unwrap();
}
