//! Every native route: its success and its typed errors.

use serde_json::json;

use crate::common::{expect_empty, expect_err, expect_json, names, sha, start, tar_of};

#[tokio::test]
async fn stores_info_usage_and_quotas() {
    let s = start().await;
    let info = s.get("/v1/info").await;
    assert!(
        info.headers().contains_key("content-length"),
        "a known length is sent"
    );
    let info = expect_json(info, 200).await;
    assert_eq!(info["scheme"], "file");
    assert_eq!(info["capabilities"]["raw_layers"], true);

    let created = expect_json(s.put("/v1/stores/s", "").await, 201).await;
    assert!(
        created["url"].as_str().unwrap().ends_with("/s"),
        "{created}"
    );
    let e = expect_err(s.put("/v1/stores/s", "").await, 409, Some("AlreadyExists")).await;
    assert!(!e.message.contains(s.dir.path().to_str().unwrap()), "{e:?}");
    let list = expect_json(s.get("/v1/stores").await, 200).await;
    assert_eq!(list, json!([created["url"]]));
    assert_eq!(expect_json(s.get("/v1/stores/s").await, 200).await, created);
    expect_err(s.get("/v1/stores/nope").await, 404, Some("NotFound")).await;

    let usage = expect_json(s.get("/v1/stores/s/usage").await, 200).await;
    assert_eq!(usage, json!({"usage": 0, "quota": null}));
    assert_eq!(
        expect_json(s.get("/v1/stores/s/quota").await, 200).await,
        json!({"quota": null})
    );
    expect_empty(s.put("/v1/stores/s/quota", r#"{"quota":10}"#).await, 204).await;
    assert_eq!(
        expect_json(s.get("/v1/stores/s/quota").await, 200).await,
        json!({"quota": 10})
    );
    let layer = tar_of(&[("f", &[7u8; 2048])]);
    expect_err(
        s.write("s", "a", "scratch", layer.clone()).await,
        507,
        Some("QuotaExceeded"),
    )
    .await;
    expect_empty(s.put("/v1/stores/s/quota", r#"{"quota":null}"#).await, 204).await;
    expect_err(
        s.put("/v1/stores/s/quota", r#"{"quota":"x"}"#).await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    expect_json(s.write("s", "a", "scratch", layer).await, 201).await;
    let usage = expect_json(s.get("/v1/stores/s/usage").await, 200).await;
    assert!(usage["usage"].as_u64().unwrap() > 0, "{usage}");

    let e = expect_err(s.delete("/v1/stores/s").await, 409, Some("Conflict")).await;
    assert!(e.message.contains('a'), "{e:?}");
    expect_json(s.delete("/v1/stores/s/images/a").await, 200).await;
    expect_empty(s.delete("/v1/stores/s").await, 204).await;
    expect_err(s.delete("/v1/stores/s").await, 404, Some("NotFound")).await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn images_owners_and_deletes() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let l1 = tar_of(&[("etc/a", b"1")]);
    let sum1 = sha(&l1);
    let meta = br#"{"k":[1,2,3]}"#;
    let resp = s
        .client
        .put(s.url(&format!("/v1/stores/s/images/a?parent=scratch&sum={sum1}")))
        .header("Imagestore-Metadata-Length", meta.len().to_string())
        .body([&meta[..], &l1].concat())
        .send()
        .await
        .unwrap();
    let a = expect_json(resp, 201).await;
    assert_eq!(a["id"], "a");
    assert_eq!(a["parent"], "scratch");
    assert_eq!(a["sum"], sum1);
    assert_eq!(a["metadata"], json!({"k": [1, 2, 3]}));
    // The same write again returns the image; another sum for the id is a conflict.
    expect_json(s.write("s", "a", "scratch", l1.clone()).await, 201).await;
    let l2 = tar_of(&[("etc/b", b"2")]);
    expect_err(
        s.write("s", "a", "scratch", l2.clone()).await,
        409,
        Some("Conflict"),
    )
    .await;
    // Bytes that do not hash to the sum.
    let resp = s
        .client
        .put(s.url(&format!("/v1/stores/s/images/b?parent=a&sum={sum1}")))
        .body(l2.clone())
        .send()
        .await
        .unwrap();
    expect_err(resp, 422, Some("DigestMismatch")).await;
    expect_err(
        s.write("s", "b", "nope", l2.clone()).await,
        404,
        Some("NotFound"),
    )
    .await;
    expect_err(
        s.write(
            "s",
            "bad",
            "scratch",
            b"not a tar at all, not at all".repeat(40),
        )
        .await,
        422,
        Some("BadArchive"),
    )
    .await;
    expect_json(s.write("s", "b", "a", l2).await, 201).await;

    assert_eq!(
        expect_json(s.get("/v1/stores/s/images/a").await, 200).await,
        a
    );
    let scratch = expect_json(s.get("/v1/stores/s/images/scratch").await, 200).await;
    assert_eq!(scratch["depth"], 0);
    let all = expect_json(s.get("/v1/stores/s/images").await, 200).await;
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let some = expect_json(s.get("/v1/stores/s/images?ids=b,%20nope,a").await, 200).await;
    let ids: Vec<&str> = some
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b", "a"]);
    expect_err(s.get("/v1/stores/s/images/zz").await, 404, Some("NotFound")).await;
    let usage = expect_json(s.get("/v1/stores/s/images/a/usage").await, 200).await;
    assert!(usage["usage"].as_u64().unwrap() > 0);

    // Owners, by the URL the resolver gives.
    let url = expect_json(s.get("/v1/stores/s/images/b/url").await, 200).await;
    let url = url["url"].as_str().unwrap().to_owned();
    expect_empty(s.put("/v1/stores/s/images/b/owners/vm1", "").await, 204).await;
    expect_empty(
        s.put("/v1/stores/s/images/b/owners/vm2?ttl_ms=60000", "")
            .await,
        204,
    )
    .await;
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("url", &url)
        .finish();
    let owners = expect_json(s.get(&format!("/v1/owners?{q}")).await, 200).await;
    assert_eq!(owners, json!(["vm1", "vm2"]));
    let e = expect_err(
        s.delete("/v1/stores/s/images/b").await,
        423,
        Some("ImageInUse"),
    )
    .await;
    assert!(e.detail["users"].to_string().contains("vm1"), "{e:?}");
    expect_empty(s.delete("/v1/stores/s/images/b/owners/vm1").await, 204).await;
    expect_empty(s.delete("/v1/stores/s/images/b/owners/vm2").await, 204).await;
    expect_err(
        s.delete("/v1/stores/s/images/b/owners/vm1").await,
        404,
        Some("NotFound"),
    )
    .await;
    expect_err(
        s.put("/v1/stores/s/images/zz/owners/vm1", "").await,
        404,
        Some("NotFound"),
    )
    .await;

    // Deletes: in use, scratch, a batch with a missing id, and a branch.
    expect_err(
        s.delete("/v1/stores/s/images/a").await,
        423,
        Some("ImageInUse"),
    )
    .await;
    expect_err(
        s.delete("/v1/stores/s/images/scratch").await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    let out = expect_json(
        s.post("/v1/stores/s/delete", r#"{"ids":["b","nope"]}"#)
            .await,
        200,
    )
    .await;
    assert_eq!(out[0]["image"]["id"], "b", "{out}");
    assert_eq!(out[1]["error"]["kind"], "NotFound", "{out}");
    assert_eq!(out[1]["error"]["code"], 404, "{out}");
    assert_eq!(
        expect_json(s.post("/v1/stores/s/delete", r#"{"ids":[]}"#).await, 200).await,
        json!([])
    );
    let short = s
        .client
        .put(s.url(&format!("/v1/stores/s/images/m?parent=scratch&sum={sum1}")))
        .header("Imagestore-Metadata-Length", "100")
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_err(short, 400, Some("InvalidArgument")).await;
    let l3 = tar_of(&[("c", b"3")]);
    expect_json(s.write("s", "c", "a", l3).await, 201).await;
    let gone = expect_json(s.delete("/v1/stores/s/images/c?branch=true").await, 200).await;
    let ids: Vec<&str> = gone
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c", "a"]);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn writables_imports_exports_and_layers() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    let l1 = tar_of(&[("etc/a", b"1"), ("etc/keep", b"k")]);
    expect_json(s.write("s", "a", "scratch", l1.clone()).await, 201).await;

    let w = expect_json(s.put("/v1/stores/s/writables/w?parent=a", "").await, 201).await;
    assert_eq!(w["parent"], "a");
    assert_eq!(w["imports"], 0);
    expect_err(
        s.put("/v1/stores/s/writables/w?parent=a", "").await,
        409,
        Some("AlreadyExists"),
    )
    .await;
    expect_err(
        s.put("/v1/stores/s/writables/w2?parent=nope", "").await,
        404,
        Some("NotFound"),
    )
    .await;
    let summary = expect_json(
        s.post(
            "/v1/stores/s/writables/w/import",
            tar_of(&[
                ("etc/b", b"2"),
                ("etc/.wh.keep", b""),
                ("big", &[5u8; 100_000]),
            ]),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(summary["entries"], 2, "{summary}");
    assert_eq!(summary["whiteouts"], 1, "{summary}");
    expect_err(
        s.post("/v1/stores/s/writables/w/import", "garbage".repeat(100))
            .await,
        422,
        Some("BadArchive"),
    )
    .await;
    let w = expect_json(s.get("/v1/stores/s/writables/w").await, 200).await;
    assert_eq!(w["imports"], 1);
    let tar = s.get("/v1/stores/s/images/w/export").await;
    assert_eq!(tar.status(), 200);
    assert_eq!(tar.headers()["content-type"], "application/x-tar");
    let tar = tar.bytes().await.unwrap();
    let n = names(&tar);
    assert!(
        n.contains(&"etc/b".to_owned()) && !n.contains(&"etc/keep".to_owned()),
        "{n:?}"
    );

    let c = expect_json(
        s.post("/v1/stores/s/writables/w/commit?new_id=c", r#"{"m":[9]}"#)
            .await,
        201,
    )
    .await;
    assert_eq!(c["parent"], "a");
    assert_eq!(c["metadata"], json!({"m": [9]}));
    expect_err(
        s.get("/v1/stores/s/writables/w").await,
        404,
        Some("NotFound"),
    )
    .await;
    expect_err(
        s.post("/v1/stores/s/writables/w/commit?new_id=d", "").await,
        404,
        Some("NotFound"),
    )
    .await;

    // Exports: the changes since an ancestor, headers only, and a filter.
    let diff = s
        .get("/v1/stores/s/images/c/export?ancestor=a")
        .await
        .bytes()
        .await
        .unwrap();
    let n = names(&diff);
    assert!(
        n.contains(&"etc/b".to_owned()) && n.contains(&"etc/.wh.keep".to_owned()),
        "{n:?}"
    );
    assert!(!n.contains(&"etc/a".to_owned()), "{n:?}");
    let full = s
        .get("/v1/stores/s/images/c/export")
        .await
        .bytes()
        .await
        .unwrap();
    assert!(full.len() > 100_000, "{}", full.len());
    let headers = s
        .get("/v1/stores/s/images/c/export?data=false")
        .await
        .bytes()
        .await
        .unwrap();
    assert!(headers.len() < 100_000, "headers only: {}", headers.len());
    expect_err(
        s.get("/v1/stores/s/images/c/export?ancestor=c2").await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    expect_err(
        s.get("/v1/stores/s/images/c/export?filter=!!").await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    expect_err(
        s.get("/v1/stores/s/images/c/export?data=maybe").await,
        400,
        Some("InvalidArgument"),
    )
    .await;

    // The raw layer comes back byte for byte, with its digest.
    let raw = s.get("/v1/stores/s/images/a/layer").await;
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["docker-content-digest"], sha(&l1).as_str());
    assert_eq!(raw.bytes().await.unwrap().as_ref(), l1.as_slice());
    expect_err(
        s.get("/v1/stores/s/images/zz/layer").await,
        404,
        Some("NotFound"),
    )
    .await;

    // A writable layer can be discarded.
    expect_json(s.put("/v1/stores/s/writables/w3?parent=c", "").await, 201).await;
    expect_empty(s.delete("/v1/stores/s/writables/w3").await, 204).await;
    expect_err(
        s.delete("/v1/stores/s/writables/w3").await,
        404,
        Some("NotFound"),
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn references_blobs_pins_and_gc() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    expect_json(
        s.write("s", "a", "scratch", tar_of(&[("a", b"1")])).await,
        201,
    )
    .await;
    expect_json(s.write("s", "b", "a", tar_of(&[("b", b"2")])).await, 201).await;
    expect_json(
        s.write("s", "old", "scratch", tar_of(&[("o", b"3")])).await,
        201,
    )
    .await;

    let manifest = br#"{"schemaVersion":2}"#;
    let md = sha(manifest);
    expect_empty(
        s.put(&format!("/v1/stores/s/blobs/{md}"), &manifest[..])
            .await,
        204,
    )
    .await;
    expect_err(
        s.put(&format!("/v1/stores/s/blobs/{md}"), "other").await,
        422,
        Some("DigestMismatch"),
    )
    .await;
    let big = vec![0u8; (4 << 20) + 1];
    expect_err(
        s.put(&format!("/v1/stores/s/blobs/{}", sha(&big)), big)
            .await,
        413,
        Some("LimitExceeded"),
    )
    .await;
    let got = s.get(&format!("/v1/stores/s/blobs/{md}")).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), manifest);
    let blobs = expect_json(s.get("/v1/stores/s/blobs").await, 200).await;
    assert_eq!(blobs[0]["digest"], md);
    assert_eq!(blobs[0]["size"], manifest.len());

    let name = "/v1/stores/s/refs/reg%3A5000%2Frepo%3Atag";
    let target = json!({"image": "b", "manifest": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len()}});
    let set = s
        .client
        .put(s.url(name))
        .json(&json!({"target": target, "expect": "absent"}))
        .send()
        .await
        .unwrap();
    let r = expect_json(set, 200).await;
    assert_eq!(r["name"], "reg:5000/repo:tag");
    assert_eq!(r["target"], target);
    let again = s
        .client
        .put(s.url(name))
        .json(&json!({"target": {"image": "a"}, "expect": "absent"}))
        .send()
        .await
        .unwrap();
    expect_err(again, 409, Some("Conflict")).await;
    let missing = s
        .client
        .put(s.url("/v1/stores/s/refs/x"))
        .json(&json!({"target": {"image": "zz"}}))
        .send()
        .await
        .unwrap();
    expect_err(missing, 404, Some("NotFound")).await;
    assert_eq!(expect_json(s.get(name).await, 200).await, r);
    let refs = expect_json(s.get("/v1/stores/s/refs").await, 200).await;
    assert_eq!(refs, json!([r]));
    expect_err(s.get("/v1/stores/s/refs/nope").await, 404, Some("NotFound")).await;
    expect_err(
        s.delete("/v1/stores/s/images/b").await,
        423,
        Some("ImageInUse"),
    )
    .await;
    expect_err(
        s.delete(&format!("/v1/stores/s/blobs/{md}")).await,
        409,
        Some("Conflict"),
    )
    .await;

    // A writable layer pins its parent.
    expect_json(s.put("/v1/stores/s/writables/w?parent=a", "").await, 201).await;
    let pins = expect_json(s.get("/v1/stores/s/pins").await, 200).await;
    assert_eq!(pins, json!([{"image": "a", "by": "writable w"}]));
    expect_empty(s.delete("/v1/stores/s/writables/w").await, 204).await;

    // Collection: a dry run plans "old", a real run deletes it; the referenced chain stays.
    let plan = expect_json(
        s.post("/v1/stores/s/gc?dry_run=true&grace_ms=0", "").await,
        200,
    )
    .await;
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["images"][0]["id"], "old", "{plan}");
    let done = expect_json(s.post("/v1/stores/s/gc?grace_ms=0&keep=a", "").await, 200).await;
    assert_eq!(done["images"][0]["id"], "old", "{done}");
    expect_err(
        s.get("/v1/stores/s/images/old").await,
        404,
        Some("NotFound"),
    )
    .await;
    expect_err(
        s.post("/v1/stores/s/gc?grace_ms=soon", "").await,
        400,
        Some("InvalidArgument"),
    )
    .await;

    // Deleting the reference, first with a stale expectation.
    let stale = s
        .client
        .delete(s.url(name))
        .json(&json!({"expect": {"image": "a"}}))
        .send()
        .await
        .unwrap();
    expect_err(stale, 409, Some("Conflict")).await;
    let gone = expect_json(s.delete(name).await, 200).await;
    assert_eq!(gone["target"]["image"], "b");
    expect_err(s.delete(name).await, 404, Some("NotFound")).await;
    expect_empty(s.delete(&format!("/v1/stores/s/blobs/{md}")).await, 204).await;
    expect_err(
        s.get(&format!("/v1/stores/s/blobs/{md}")).await,
        404,
        Some("NotFound"),
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn bad_names_and_routes_are_answered_with_error_bodies() {
    let s = start().await;
    expect_json(s.put("/v1/stores/s", "").await, 201).await;
    for path in [
        "/v1/stores/bad..name",
        "/v1/stores/s/images/bad%20id",
        "/v1/stores/s/refs/%2Fabs",
        "/v1/stores/s/blobs/sha256:short",
        "/v1/stores/s/images?ids=a,b%2Fc",
    ] {
        expect_err(s.get(path).await, 400, Some("InvalidArgument")).await;
    }
    expect_err(
        s.put("/v1/stores/s/images/a?parent=scratch&sum=md5:x", "")
            .await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    expect_err(
        s.put("/v1/stores/s/images/a?sum=sha256:00", "").await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    expect_err(s.put("/v1/stores/s/images/owners/x/y", "").await, 404, None).await;
    expect_err(s.get("/v1/nothing").await, 404, None).await;
    expect_err(s.post("/v1/stores", "").await, 405, None).await;
    expect_err(
        s.post("/v1/stores/s/delete", "{").await,
        400,
        Some("InvalidArgument"),
    )
    .await;
    let many: Vec<String> = (0..4097).map(|i| format!("i{i}")).collect();
    let resp = s
        .client
        .post(s.url("/v1/stores/s/delete"))
        .json(&json!({ "ids": many }))
        .send()
        .await
        .unwrap();
    expect_err(resp, 413, Some("LimitExceeded")).await;
    let doc = expect_json(s.get("/openapi.json").await, 200).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/v1/info",
            "/v1/owners",
            "/v1/stores",
            "/v1/stores/{store}",
            "/v1/stores/{store}/blobs",
            "/v1/stores/{store}/blobs/{digest}",
            "/v1/stores/{store}/delete",
            "/v1/stores/{store}/gc",
            "/v1/stores/{store}/images",
            "/v1/stores/{store}/images/{id}",
            "/v1/stores/{store}/images/{id}/export",
            "/v1/stores/{store}/images/{id}/layer",
            "/v1/stores/{store}/images/{id}/owners/{owner}",
            "/v1/stores/{store}/images/{id}/url",
            "/v1/stores/{store}/images/{id}/usage",
            "/v1/stores/{store}/pins",
            "/v1/stores/{store}/quota",
            "/v1/stores/{store}/refs",
            "/v1/stores/{store}/refs/{name}",
            "/v1/stores/{store}/usage",
            "/v1/stores/{store}/writables/{id}",
            "/v1/stores/{store}/writables/{id}/commit",
            "/v1/stores/{store}/writables/{id}/import",
        ]
    );
    // Every reference in the document resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/").skip(1) {
        let target = &r[..r.find('"').unwrap()];
        let mut node = &doc["components"];
        for part in target.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "{target} is not defined");
    }
    s.stop().await.unwrap();
}
