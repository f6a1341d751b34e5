//! Layers stream both ways without being held whole, and an upload cut off by its client
//! leaves nothing behind.

use futures::StreamExt;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{expect_err, expect_json, sha, start, tar_of};

const MIB: usize = 1 << 20;

/// Megabyte `i` of the big file: bytes that do not compress, the same each time.
fn chunk(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tar holding one file of `mib` MiB, as a sequence of pieces: header, data, end.
fn big_tar_pieces(mib: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut h = tar::Header::new_ustar();
    h.set_path("big.bin").unwrap();
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size((mib * MIB) as u64);
    h.set_cksum();
    std::iter::once(h.as_bytes().to_vec())
        .chain((0..mib).map(chunk))
        .chain(std::iter::once(vec![0u8; 1024]))
}

#[tokio::test]
async fn a_64_mib_layer_streams_in_and_out_with_matching_digests() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let mib = 64;
    let (sum, file_sum) = {
        let mut all = sha2::Sha256::new();
        let mut file = sha2::Sha256::new();
        for (i, piece) in big_tar_pieces(mib).enumerate() {
            all.update(&piece);
            if (1..=mib).contains(&i) {
                file.update(&piece);
            }
        }
        (
            format!("sha256:{:x}", all.finalize()),
            format!("{:x}", file.finalize()),
        )
    };
    // The body is produced a piece at a time as the connection takes it.
    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        big_tar_pieces(mib).map(Ok::<_, std::io::Error>),
    ));
    let resp = s
        .client
        .put(s.url(&format!("/v1/stores/s/images/big?parent=scratch&sum={sum}")))
        .body(body)
        .send()
        .await
        .unwrap();
    let img = expect_json(resp, 201).await;
    assert_eq!(img["sum"], sum);

    // The raw layer, hashed as it arrives.
    let resp = s.get("/v1/stores/s/images/big/layer").await;
    assert_eq!(resp.headers()["docker-content-digest"], sum.as_str());
    let mut stream = resp.bytes_stream();
    let mut h = sha2::Sha256::new();
    let mut n = 0;
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        n += b.len();
        h.update(&b);
    }
    assert_eq!(format!("sha256:{:x}", h.finalize()), sum);
    assert!(n > mib * MIB);

    // The export, spooled to a file and read back as a tar.
    let path = s.dir.path().join("export.tar");
    let mut out = tokio::fs::File::create(&path).await.unwrap();
    let mut stream = s.get("/v1/stores/s/images/big/export").await.bytes_stream();
    while let Some(b) = stream.next().await {
        out.write_all(&b.unwrap()).await.unwrap();
    }
    out.flush().await.unwrap();
    let found = tokio::task::spawn_blocking(move || {
        let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_string_lossy() == "big.bin" {
                let mut h = sha2::Sha256::new();
                std::io::copy(&mut e, &mut h).unwrap();
                return Some(format!("{:x}", h.finalize()));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(found.as_deref(), Some(file_sum.as_str()));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing_and_the_id_writable() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let pieces: Vec<Vec<u8>> = big_tar_pieces(4).collect();
    let tar = pieces.concat();
    let sum = sha(&tar);

    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "PUT /v1/stores/s/images/x?parent=scratch&sum={sum} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        s.addr,
        tar.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&tar[..tar.len() / 2]).await.unwrap();
    conn.flush().await.unwrap();
    // Let the server stage part of it, then go away.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(conn);

    expect_err(s.get("/v1/stores/s/images/x").await, 404, Some("NotFound")).await;
    let listed = expect_json(s.get("/v1/stores/s/images").await, 200).await;
    assert_eq!(listed, serde_json::json!([]));
    // The id can be written at once.
    let img = expect_json(s.write("s", "x", "scratch", tar).await, 201).await;
    assert_eq!(img["sum"], sum);

    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_stalled_upload_is_cut_off_and_leaves_nothing() {
    let s = crate::common::start_with(|c, _| {
        c.body_idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let tar: Vec<u8> = big_tar_pieces(1).collect::<Vec<_>>().concat();
    let sum = sha(&tar);
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "PUT /v1/stores/s/images/x?parent=scratch&sum={sum} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        tar.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&tar[..1000]).await.unwrap();
    // Nothing more is sent: the server answers (or closes) on its own.
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    )
    .await
    .expect("the server gave up on the stalled body")
    .ok();
    expect_err(s.get("/v1/stores/s/images/x").await, 404, Some("NotFound")).await;
    expect_json(s.write("s", "x", "scratch", tar).await, 201).await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn an_answer_given_before_the_body_is_read_reaches_the_client() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let small: Vec<u8> = big_tar_pieces(1).collect::<Vec<_>>().concat();
    expect_json(s.write("s", "a", "scratch", small).await, 201).await;
    // Another layer for the same id: the conflict is found before the 24 MiB are read.
    let big: Vec<u8> = big_tar_pieces(24).collect::<Vec<_>>().concat();
    expect_err(
        s.write("s", "a", "scratch", big.clone()).await,
        409,
        Some("Conflict"),
    )
    .await;
    // A missing parent, the same.
    expect_err(s.write("s", "b", "nope", big).await, 404, Some("NotFound")).await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let s = crate::common::start_with(|c, _| {
        c.write_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let tar: Vec<u8> = big_tar_pieces(32).collect::<Vec<_>>().concat();
    expect_json(s.write("s", "a", "scratch", tar.clone()).await, 201).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 << 10).unwrap();
    let mut conn = sock.connect(s.addr).await.unwrap();
    let head = format!(
        "GET /v1/stores/s/images/a/layer HTTP/1.1\r\nHost: {}\r\n\r\n",
        s.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // Read nothing for a while: the server gives up on this connection.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut got = Vec::new();
    let end = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut got),
    )
    .await
    .expect("the connection ended");
    assert!(
        end.is_err() || got.len() < tar.len(),
        "read {} of {} bytes",
        got.len(),
        tar.len()
    );
    // The server still serves others.
    expect_json(s.get("/v1/stores/s/images/a").await, 200).await;
    s.stop().await.unwrap();
}

/// A layer kept as a file goes out in 1 MiB reads with its length: layers of exactly two
/// reads, one byte less and one byte more come back byte for byte, with `Content-Length`, on
/// the native route and VIC's GetImageTar.
#[tokio::test]
async fn layer_files_go_out_whole_with_their_length() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    // One header block, the data padded to a block, two end blocks.
    let two_mib = 2 * MIB;
    for (id, total) in [
        ("exact", two_mib),
        ("less", two_mib - 512),
        ("more", two_mib + 512),
    ] {
        let data = vec![7u8; total - 3 * 512];
        let tar = tar_of(&[("f", &data)]);
        assert_eq!(tar.len(), total, "{id}: the tar's own size");
        expect_json(s.write("s", id, "scratch", tar.clone()).await, 201).await;
        for path in [
            format!("/v1/stores/s/images/{id}/layer"),
            format!("/storage/s/tar/{id}"),
        ] {
            let resp = s.get(&path).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(
                resp.headers()["content-length"],
                total.to_string().as_str(),
                "{path}"
            );
            let got = resp.bytes().await.unwrap();
            assert!(got[..] == tar[..], "{path}: the bytes as written");
        }
    }
    s.stop().await.unwrap();
}
