//! Tests of the write pipeline.
use super::*;
use crate::layer::toc::EntryKind;
use std::io::Write;

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("finish")
}

struct VecSink(Vec<u8>);
#[async_trait]
impl StagingSink for VecSink {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.0.extend_from_slice(&chunk);
        Ok(())
    }
}

async fn run(bytes: Vec<u8>, sum: &Digest) -> (Result<Ingested>, Vec<u8>) {
    let mut sink = VecSink(Vec::new());
    let body: ByteStream = Box::pin(io::Cursor::new(bytes));
    let r = ingest(
        body,
        Some(sum),
        &mut sink,
        Arc::new(EmptyView),
        IngestLimits::default(),
    )
    .await;
    (r, sink.0)
}

#[tokio::test]
async fn plain_gzip_and_zstd_give_the_same_toc() -> Result<()> {
    let big = vec![7u8; 600_000];
    let plain = tar_of(&[("a/b.txt", b"hello"), ("big.bin", &big)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let gz = gz.finish().map_err(|e| Error::invalid(e.to_string()))?;
    let zs = zstd::encode_all(plain.as_slice(), 1).map_err(|e| Error::invalid(e.to_string()))?;
    let mut tocs = Vec::new();
    for (bytes, comp) in [
        (plain.clone(), Compression::None),
        (gz, Compression::Gzip),
        (zs, Compression::Zstd),
    ] {
        let sum = Digest::sha256_of(&bytes);
        let (r, staged) = run(bytes.clone(), &sum).await;
        let ing = r?;
        assert_eq!(staged, bytes, "sink gets the raw bytes");
        assert_eq!(ing.digest, sum);
        assert_eq!(ing.size, bytes.len() as u64);
        assert_eq!(ing.toc.compression, comp);
        tocs.push(ing.toc.entries);
    }
    assert_eq!(tocs[0], tocs[1]);
    assert_eq!(tocs[0], tocs[2]);
    let b = &tocs[0][0];
    assert_eq!(
        (b.path.as_str(), b.kind, b.size),
        ("a/b.txt", EntryKind::File, 5)
    );
    assert_eq!(b.digest, Some(Digest::sha256_of(b"hello")));
    assert_eq!(
        &plain[b.data_offset as usize..b.data_offset as usize + 5],
        b"hello"
    );
    assert_eq!(tocs[0][1].digest, Some(Digest::sha256_of(&big)));
    Ok(())
}

#[tokio::test]
async fn wrong_sum_is_a_mismatch() {
    let plain = tar_of(&[("a", b"x")]);
    let wrong = Digest::empty_sha256();
    let (r, _) = run(plain.clone(), &wrong).await;
    match r {
        Err(Error::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::sha256_of(&plain));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn empty_body_is_an_empty_layer() -> Result<()> {
    let (r, _) = run(Vec::new(), &Digest::empty_sha256()).await;
    let ing = r?;
    assert!(ing.toc.entries.is_empty());
    assert_eq!(ing.size, 0);
    Ok(())
}

#[tokio::test]
async fn bomb_is_limited() -> Result<()> {
    let zeros = tar_of(&[("z", &vec![0u8; 8 << 20])]);
    let zs = zstd::encode_all(zeros.as_slice(), 19).map_err(|e| Error::invalid(e.to_string()))?;
    let sum = Digest::sha256_of(&zs);
    let limits = IngestLimits {
        ratio_floor: 1 << 20,
        max_ratio: 100,
        ..IngestLimits::default()
    };
    let body: ByteStream = Box::pin(io::Cursor::new(zs));
    let r = ingest(body, Some(&sum), &mut NullSink, Arc::new(EmptyView), limits).await;
    assert!(
        matches!(
            r,
            Err(Error::LimitExceeded {
                what: "decompression ratio",
                ..
            })
        ),
        "{r:?}"
    );
    Ok(())
}

/// A zstd skippable frame with magic nibble `n` around `payload`.
fn skippable(n: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x50 | n, 0x2a, 0x4d, 0x18];
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test]
async fn zstd_skippable_frames_are_accepted() -> Result<()> {
    let plain = tar_of(&[("a", b"alpha"), ("b", &[3u8; 5000])]);
    let (first, second) = plain.split_at(1024);
    let z = |b: &[u8]| zstd::encode_all(b, 3).map_err(|e| Error::invalid(e.to_string()));
    // A skippable frame opens the stream and another sits between two data frames.
    let mut stream = skippable(0, b"metadata");
    stream.extend_from_slice(&z(first)?);
    stream.extend_from_slice(&skippable(0xf, &[9u8; 100]));
    stream.extend_from_slice(&z(second)?);
    assert_eq!(sniff(&stream)?, Compression::Zstd);
    let sum = Digest::sha256_of(&stream);
    let (r, staged) = run(stream.clone(), &sum).await;
    let ing = r?;
    assert_eq!(staged, stream);
    assert_eq!(ing.toc.compression, Compression::Zstd);
    let (p, _) = run(plain.clone(), &Digest::sha256_of(&plain)).await;
    assert_eq!(ing.toc.entries, p?.toc.entries);
    assert_eq!(
        ing.toc.entries[1].digest,
        Some(Digest::sha256_of(&[3u8; 5000]))
    );
    Ok(())
}

/// A GNU sparse file of `size` bytes holding `b"head"` at 0 and `b"tail"` at its end.
fn sparse_tar(size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(8);
    if let Some(gnu) = h.as_gnu_mut() {
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(4);
        gnu.sparse[1].set_offset(size - 4);
        gnu.sparse[1].set_length(4);
        gnu.set_real_size(size);
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "big", b"headtail".as_slice())
        .expect("append");
    b.into_inner().expect("finish")
}

#[tokio::test]
async fn sparse_holes_are_not_hashed_and_sizes_are_bounded() -> Result<()> {
    // 1 PiB of holes: the digest covers the map and the 8 stored bytes.
    let size = 1u64 << 50;
    let plain = sparse_tar(size);
    let limits = IngestLimits {
        max_file_size: size,
        ..IngestLimits::default()
    };
    let body: ByteStream = Box::pin(io::Cursor::new(plain.clone()));
    let sum = Digest::sha256_of(&plain);
    let ing = ingest(body, Some(&sum), &mut NullSink, Arc::new(EmptyView), limits).await?;
    let e = &ing.toc.entries[0];
    assert_eq!((e.size, e.stored_len()), (size, 8));
    assert_eq!(e.digest_form, DigestForm::SparseMap);
    let mut h = Algorithm::Sha256.hasher();
    h.update(b"imagestore sparse file v1\0");
    for n in [size, 2, 0, 4, size - 4, 4] {
        h.update(&n.to_be_bytes());
    }
    h.update(b"headtail");
    assert_eq!(e.digest, Some(h.finish()));
    // One byte over the limit (1 TiB by default) is refused before any data is read.
    let over = sparse_tar((1 << 40) + 1);
    let body: ByteStream = Box::pin(io::Cursor::new(over.clone()));
    let r = ingest(
        body,
        Some(&Digest::sha256_of(&over)),
        &mut NullSink,
        Arc::new(EmptyView),
        IngestLimits::default(),
    )
    .await;
    match r {
        Err(Error::LimitExceeded { what, value, max }) => {
            assert!(what.contains("size of a file"), "{what}");
            assert_eq!((value, max), ((1 << 40) + 1, 1 << 40));
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}
