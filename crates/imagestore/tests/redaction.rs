//! Secrets in store URLs are never echoed: for every scheme (compiled in or not), URLs with a
//! marker secret in the userinfo and in assorted query parameters (secret-looking ones, and
//! options the backend does not know) fail to open with errors whose `Display` and `Debug`
//! hold no trace of the marker (`imagestore_core::redact`, `docs/security.md`).

const MARKER: &str = "Sekr1tMarker";

/// Store URLs carrying [`MARKER`] in places a secret may be put, per scheme.
pub fn urls() -> Vec<String> {
    let m = MARKER;
    vec![
        format!("file://user:{m}@localhost/tmp/imagestore-redact"),
        format!("file:///tmp/imagestore-redact?secret={m}"),
        format!("file:///tmp/imagestore-redact?foo={m}"),
        format!("file:///tmp/imagestore-redact#{m}"),
        format!("s3://user:{m}@bucket/p"),
        format!("s3://bucket/p?endpoint=http://127.0.0.1:9&secret_access_key={m}"),
        format!("s3://bucket/p?session_token={m}&region=eu"),
        format!("s3://bucket/p?endpoint=http://u:{m}@127.0.0.1:9"),
        format!("s3://bucket/p?X-Amz-Signature={m}"),
        format!("s3://bucket/p?foo={m}"),
        format!("s3://bucket/p?part_size=1&credential={m}"),
        format!("vmdk://user:{m}@host/tmp/imagestore-redact"),
        format!("vmdk:///tmp/imagestore-redact?password={m}"),
        format!("vmdk:///tmp/imagestore-redact?capacity_kib=1&passwd={m}"),
        format!("vmdk:///tmp/imagestore-redact?foo={m}"),
        format!("vsphere://user:{m}@127.0.0.1:9/dc/ds/folder"),
        format!("vsphere://127.0.0.1:9/dc/ds/folder?allow_http=true&token={m}"),
        format!("vsphere://127.0.0.1:9/dc/ds/folder?api_key={m}"),
        format!("vsphere://127.0.0.1:9/dc/ds/folder?foo={m}"),
        format!("imagestore+http://user:{m}@127.0.0.1:9"),
        format!("imagestore+https://127.0.0.1:9?token={m}"),
        format!("imagestore+https://127.0.0.1:9?ca=/nowhere.pem&api_key={m}"),
        format!("imagestore+http://127.0.0.1:9/prefix?foo={m}"),
        format!("s3 ://user:{m}@bucket/p?x={m}"),
    ]
}

#[tokio::test]
async fn no_open_error_echoes_a_secret() {
    for url in urls() {
        match imagestore::open(&url).await {
            Ok(_) => panic!("{url}: opened"),
            Err(e) => {
                let shown = format!("{e} / {e:?}");
                assert!(!shown.contains(MARKER), "{url}: {shown}");
            }
        }
    }
}

#[test]
fn the_rule_hides_passwords_and_secret_values() {
    for url in urls() {
        let shown = imagestore::redact::redact(&url);
        let secret_named = ["secret", "token", "signature", "password", "passwd", "key"]
            .iter()
            .any(|w| url.to_ascii_lowercase().contains(w));
        if url.contains('@') || secret_named {
            assert!(!shown.contains(MARKER), "{url} -> {shown}");
        }
    }
}
