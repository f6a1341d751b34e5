//! VIC's port-layer storage API over HTTP: the conformance cases of the API specification
//! (§4.1 cases 1-4 from VIC's handler tests, §4.2 cases 5-17 from its handler code), adapted
//! where `docs/server.md` documents a deliberate deviation, plus layers written through
//! WriteImage and read back through `/archive`, GetImageTar and StatPath. Each test serves a
//! `file://` store in a temporary directory on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use imagestore::{FilterSpec, ImageId, ImageStorer, StoreName};
use imagestore_server::{ServeConfig, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// sha256 of nothing: the sum VIC's handler tests write their body-less layers with.
const EMPTY_SUM: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct Vic {
    base: String,
    http: reqwest::Client,
    storer: Arc<dyn ImageStorer>,
    _dir: tempfile::TempDir,
}

impl Vic {
    async fn start() -> Result<Vic> {
        let dir = tempfile::tempdir()?;
        let storer = imagestore::open(&format!("file://{}", dir.path().display())).await?;
        let mut config = ServeConfig::new(storer.clone());
        config.listen = "127.0.0.1:0".parse()?;
        let server = Server::bind(config).await?;
        let base = format!("http://{}", server.local_addr());
        tokio::spawn(server.run(std::future::pending()));
        imagestore_core::tls::install_crypto_provider();
        Ok(Vic {
            base,
            http: reqwest::Client::new(),
            storer,
            _dir: dir,
        })
    }

    /// `H`: what the links start with (the host clients reach the server by).
    fn h(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    async fn create_store(&self, name: &str) -> Result<Answer> {
        answer(
            self.req(Method::POST, "/storage")
                .header("content-type", "application/json")
                .body(json!({ "name": name }).to_string()),
        )
        .await
    }

    /// WriteImage with `body` (none when empty) and the query `extra`.
    async fn write(&self, store: &str, query: &str, body: Vec<u8>) -> Result<Answer> {
        let mut r = self.req(Method::POST, &format!("/storage/{store}?{query}"));
        if !body.is_empty() {
            r = r
                .header("content-type", "application/octet-stream")
                .body(body);
        }
        answer(r).await
    }

    /// WriteImage of a body-less layer `id` on `parent` (VIC's handler tests' way).
    async fn write_empty(&self, store: &str, id: &str, parent: &str) -> Result<Answer> {
        self.write(
            store,
            &format!("image_id={id}&parent_id={parent}&sum={EMPTY_SUM}"),
            Vec::new(),
        )
        .await
    }

    async fn get(&self, path: &str) -> Result<Answer> {
        answer(self.req(Method::GET, path)).await
    }
}

/// A response read whole.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Checks the status and, when given, the exact body (Go's encoder: a final newline).
    fn expect(&self, status: u16, body: Option<Value>) -> Result<&Answer> {
        ensure!(
            self.status.as_u16() == status,
            "status {} (wanted {status}): {}",
            self.status,
            self.text()
        );
        if let Some(want) = body {
            ensure!(
                self.text().ends_with('\n'),
                "no final newline: {:?}",
                self.text()
            );
            ensure!(self.json()? == want, "body {} (wanted {want})", self.text());
        }
        Ok(self)
    }
}

async fn answer(r: reqwest::RequestBuilder) -> Result<Answer> {
    let resp = r.send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?.to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn image_json(
    h: &str,
    store: &str,
    id: &str,
    parent: Option<&str>,
    meta: &[(&str, &str)],
) -> Value {
    let mut v = json!({
        "ID": id,
        "SelfLink": format!("{h}/storage/images/{store}/{id}"),
        "Store": format!("{h}/storage/images/{store}"),
    });
    if let Some(p) = parent {
        v["Parent"] = json!(format!("{h}/storage/images/{store}/{p}"));
    }
    if !meta.is_empty() {
        let m: BTreeMap<&str, &str> = meta.iter().copied().collect();
        v["Metadata"] = json!(m);
    }
    v
}

fn ids_of(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A tar of `(path, content)` files, `(path/, "")` directories and `(path, "->target")`
/// symlinks.
fn layer(entries: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        if let Some(dir) = path.strip_suffix('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, dir, std::io::empty())?;
        } else if let Some(target) = content.strip_prefix("->") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, path, target)?;
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, path, content.as_bytes())?;
        }
    }
    Ok(b.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

fn sum(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One entry of an exported tar: path (without a trailing `/`), data and `change_type`.
type Entry = (String, Vec<u8>, Option<String>);

/// An exported tar's entries.
fn entries(tar_bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().trim_end_matches('/').to_owned();
        let mut change = None;
        if let Some(exts) = e.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if ext.key()? == "SCHILY.xattr.change_type" {
                    change = Some(ext.value()?.to_owned());
                }
            }
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.push((path, data, change));
    }
    Ok(out)
}

fn spec(inclusions: &[&str]) -> String {
    let f = FilterSpec {
        inclusions: inclusions.iter().map(|s| (*s).to_owned()).collect(),
        ..FilterSpec::default()
    };
    f.encode()
}

/// VIC's handler tests' `testImage`: on scratch, metadata `foo=bar`, no body.
async fn write_test_image(v: &Vic) -> Result<Answer> {
    v.write(
        "testStore",
        &format!(
            "image_id=testImage&parent_id=scratch&sum={EMPTY_SUM}&metadatakey=foo&metadataval=bar"
        ),
        Vec::new(),
    )
    .await
}

/// The `Image` VIC's handler tests expect for `testImage`.
fn test_image(h: &str) -> Value {
    image_json(
        h,
        "testStore",
        "testImage",
        Some("scratch"),
        &[("foo", "bar")],
    )
}

// ---- §4.1: VIC's handler tests -----------------------------------------------------------

/// Case 1: creating a store twice answers 201 and then exactly VIC's 409.
#[tokio::test]
async fn case01_create_image_store_twice() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.create_store("testStore").await?.expect(
        201,
        Some(json!({"code": 201, "url": format!("{h}/storage/images/testStore")})),
    )?;
    let again = v.create_store("testStore").await?;
    again.expect(
        409,
        Some(json!({"code": 409, "message": "An image store with that name already exists"})),
    )?;
    ensure!(
        again.text()
            == "{\"code\":409,\"message\":\"An image store with that name already exists\"}\n"
    );
    // VIC panics on a body-less request; we answer go-swagger's 422.
    answer(v.req(Method::POST, "/storage")).await?.expect(
        422,
        Some(json!({"code": 602, "message": "name in body is required"})),
    )?;
    Ok(())
}

/// Case 2: GetImage before the store, before the image, and after it is written.
#[tokio::test]
async fn case02_get_image_lifecycle() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.get("/storage/testStore/info/testImage")
        .await?
        .expect(404, None)?;
    let created = v.create_store("testStore").await?;
    ensure!(created.json()?["url"] == json!(format!("{h}/storage/images/testStore")));
    v.get("/storage/testStore/info/testImage")
        .await?
        .expect(404, None)?;
    write_test_image(&v).await?.expect(201, None)?;
    v.get("/storage/testStore/info/testImage")
        .await?
        .expect(200, Some(test_image(&h)))?;
    Ok(())
}

/// Case 3: ListImages without ids (scratch excluded) and with 25 odd ids.
#[tokio::test]
async fn case03_list_images() -> Result<()> {
    let v = Vic::start().await?;
    v.get("/storage/testStore").await?.expect(404, None)?;
    v.create_store("testStore").await?.expect(201, None)?;
    for i in 1..50 {
        v.write_empty("testStore", &format!("id-{i}"), "scratch")
            .await?
            .expect(201, None)?;
    }
    let all = v.get("/storage/testStore").await?;
    all.expect(200, None)?;
    let mut ids = ids_of(&all.json()?);
    ids.sort();
    let mut want: Vec<String> = (1..50).map(|i| format!("id-{i}")).collect();
    want.sort();
    ensure!(ids == want, "{ids:?}");
    let odd: Vec<String> = (1..50).step_by(2).map(|i| format!("id-{i}")).collect();
    let some = v
        .get(&format!("/storage/testStore?ids={}", odd.join(",")))
        .await?;
    some.expect(200, None)?;
    ensure!(ids_of(&some.json()?) == odd);
    Ok(())
}

/// Case 4: WriteImage answers exactly VIC's 201 `Image`.
#[tokio::test]
async fn case04_write_image_via_rest() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.create_store("testStore").await?.expect(201, None)?;
    write_test_image(&v)
        .await?
        .expect(201, Some(test_image(&h)))?;
    Ok(())
}

// ---- §4.2: from VIC's handler and generated code -----------------------------------------

/// Case 5: an image with a child is in use: 423 with VIC's message, nothing deleted.
#[tokio::test]
async fn case05_delete_in_use_by_child() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.create_store("s").await?;
    v.write_empty("s", "b", "scratch")
        .await?
        .expect(201, None)?;
    v.write_empty("s", "c", "b").await?.expect(201, None)?;
    let r = answer(v.req(
        Method::DELETE,
        &format!("/storage/s/info/b?keepNodes={h}/storage/images/s/zzz"),
    ))
    .await?;
    r.expect(
        423,
        Some(json!({"code": 423, "message": format!("{h}/storage/images/s/b in use by child images")})),
    )?;
    let left = v.get("/storage/s").await?;
    ensure!(ids_of(&left.json()?).len() == 2);
    Ok(())
}

async fn chain(v: &Vic) -> Result<()> {
    v.write_empty("s", "1", "scratch")
        .await?
        .expect(201, None)?;
    v.write_empty("s", "10", "1").await?.expect(201, None)?;
    v.write_empty("s", "100", "10").await?.expect(201, None)?;
    Ok(())
}

/// Case 6: the branch delete walks up to scratch, or stops before a keep node.
#[tokio::test]
async fn case06_delete_branch() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.create_store("s").await?;
    chain(&v).await?;
    let r = answer(v.req(
        Method::DELETE,
        &format!("/storage/s/info/100?keepNodes={h}/storage/images/s/x"),
    ))
    .await?;
    r.expect(200, None)?;
    ensure!(ids_of(&r.json()?) == ["100", "10", "1"]);
    ensure!(r.json()?[0] == image_json(&h, "s", "100", Some("10"), &[]));
    chain(&v).await?;
    let r = answer(v.req(
        Method::DELETE,
        &format!("/storage/s/info/100?keepNodes={h}/storage/images/s/1"),
    ))
    .await?;
    ensure!(ids_of(&r.json()?) == ["100", "10"], "{}", r.text());
    // Keep nodes compare as whole URLs: another host keeps nothing.
    v.write_empty("s", "10", "1").await?.expect(201, None)?;
    let r = answer(v.req(
        Method::DELETE,
        "/storage/s/info/10?keepNodes=http://elsewhere/storage/images/s/1",
    ))
    .await?;
    ensure!(ids_of(&r.json()?) == ["10", "1"], "{}", r.text());
    Ok(())
}

/// Case 7: the leaf itself is a keep node. VIC answers 500; we answer 423 with its message.
/// Deleting scratch (a VIC panic) is refused with 423 too.
#[tokio::test]
async fn case07_leaf_is_a_keep_node() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.create_store("s").await?;
    chain(&v).await?;
    let link = format!("{h}/storage/images/s/100");
    answer(v.req(
        Method::DELETE,
        &format!("/storage/s/info/100?keepNodes={link}"),
    ))
    .await?
    .expect(
        423,
        Some(json!({"code": 423, "message": format!("{link} can't be deleted")})),
    )?;
    let r = answer(v.req(
        Method::DELETE,
        &format!("/storage/s/info/scratch?keepNodes={h}/storage/images/s/x"),
    ))
    .await?;
    r.expect(423, None)?;
    ensure!(
        r.json()?["message"]
            .as_str()
            .is_some_and(|m| m.contains("root"))
    );
    v.get("/storage/s/info/100").await?.expect(200, None)?;
    answer(v.req(Method::DELETE, "/storage/s/info/nope?keepNodes=http://x/y"))
        .await?
        .expect(404, None)?;
    Ok(())
}

/// Case 8: keepNodes is required and must have an element.
#[tokio::test]
async fn case08_keep_nodes_required() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    v.write_empty("s", "a", "scratch").await?;
    let want = json!({"code": 602, "message": "keepNodes in query is required"});
    for q in ["", "?keepNodes=", "?keepNodes=,%20,"] {
        answer(v.req(Method::DELETE, &format!("/storage/s/info/a{q}")))
            .await?
            .expect(422, Some(want.clone()))?;
    }
    Ok(())
}

/// Case 9: an existing id answers the original image, whatever the new sum, metadata and
/// parent; the body is not read (here it is not even a tar).
#[tokio::test]
async fn case09_existing_id_wins() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.create_store("s").await?;
    v.write_empty("s", "p", "scratch").await?;
    v.write(
        "s",
        &format!("image_id=a&parent_id=scratch&sum={EMPTY_SUM}&metadatakey=k&metadataval=v"),
        Vec::new(),
    )
    .await?
    .expect(201, None)?;
    let other = format!("sha256:{}", "1".repeat(64));
    v.write(
        "s",
        &format!("image_id=a&parent_id=p&sum={other}&metadatakey=k2&metadataval=v2"),
        b"not a tar at all".to_vec(),
    )
    .await?
    .expect(
        201,
        Some(image_json(&h, "s", "a", Some("scratch"), &[("k", "v")])),
    )?;
    Ok(())
}

/// Case 10: a missing parent. VIC answers 500; we answer 404 with VIC's message.
#[tokio::test]
async fn case10_missing_parent() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    for store in ["s", "nostore"] {
        let r = v.write_empty(store, "a", "ghost").await?;
        r.expect(404, None)?;
        let msg = r.json()?["message"].as_str().unwrap_or("").to_owned();
        ensure!(msg.starts_with("parent (ghost) doesn't exist in "), "{msg}");
    }
    Ok(())
}

/// Case 11: scratch is hidden from lists but can be fetched, without Parent or Metadata.
#[tokio::test]
async fn case11_get_scratch() -> Result<()> {
    let v = Vic::start().await?;
    let h = v.h().to_owned();
    v.create_store("s").await?;
    let r = v.get("/storage/s/info/scratch").await?;
    r.expect(200, Some(image_json(&h, "s", "scratch", None, &[])))?;
    let obj = r.json()?;
    ensure!(obj.get("Parent").is_none() && obj.get("Metadata").is_none());
    Ok(())
}

/// Case 12: an unknown store lists as `[]` with ids and is 404 without.
#[tokio::test]
async fn case12_unknown_store_lists() -> Result<()> {
    let v = Vic::start().await?;
    let r = v.get("/storage/unknown?ids=a,b").await?;
    r.expect(200, Some(json!([])))?;
    v.get("/storage/unknown").await?.expect(404, None)?;
    // Duplicates repeat and scratch is returned when asked for.
    v.create_store("s").await?;
    v.write_empty("s", "a", "scratch").await?;
    let r = v.get("/storage/s?ids=a,%20nope,a,scratch").await?;
    ensure!(ids_of(&r.json()?) == ["a", "a", "scratch"], "{}", r.text());
    Ok(())
}

/// Case 13: GetImageTar. VIC answers 501; file:// keeps raw layers, so we answer the layer
/// exactly as written.
#[tokio::test]
async fn case13_get_image_tar() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    let raw = gzip(&layer(&[
        ("etc/", ""),
        ("etc/hosts", "127.0.0.1 localhost\n"),
    ])?)?;
    v.write(
        "s",
        &format!("image_id=g&parent_id=scratch&sum={}", sum(&raw)),
        raw.clone(),
    )
    .await?
    .expect(201, None)?;
    let r = v.get("/storage/s/tar/g").await?;
    r.expect(200, None)?;
    ensure!(r.body == raw);
    ensure!(r.header("content-type").as_deref() == Some("application/octet-stream"));
    ensure!(r.header("docker-content-digest") == Some(sum(&raw)));
    v.get("/storage/s/tar/nope").await?.expect(404, None)?;
    v.get("/storage/s/tar/scratch").await?.expect(404, None)?;
    Ok(())
}

/// Case 14: GET /archive's parameter errors.
#[tokio::test]
async fn case14_export_archive_errors() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    v.write_empty("s", "a", "scratch").await?;
    let r = v
        .get("/archive?store=s&deviceID=a&data=true&filterSpec=!!!")
        .await?;
    r.expect(422, None)?;
    ensure!(r.body.is_empty());
    let r = v.get("/archive?store=nostore&deviceID=a&data=true").await?;
    r.expect(404, None)?;
    ensure!(r.body.is_empty());
    v.get("/archive?store=s&deviceID=a").await?.expect(
        422,
        Some(json!({"code": 602, "message": "data in query is required"})),
    )?;
    // Deviations: an ancestor that is not one is 422 (VIC does not check), an unknown image
    // is 404 (VIC: 500).
    let r = v
        .get("/archive?store=s&deviceID=a&ancestor=ghost&data=true")
        .await?;
    r.expect(422, None)?;
    ensure!(r.body.is_empty());
    v.get("/archive?store=s&deviceID=nope&data=true")
        .await?
        .expect(404, None)?;
    Ok(())
}

/// Case 15: StatPath needs exactly one inclusion.
#[tokio::test]
async fn case15_stat_path_needs_one_inclusion() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    v.write_empty("s", "a", "scratch").await?;
    for q in [
        String::new(),
        format!("&filterSpec={}", urlencode(&spec(&["etc", "usr"]))),
    ] {
        let r = answer(v.req(Method::HEAD, &format!("/archive?store=s&deviceID=a{q}"))).await?;
        r.expect(422, None)?;
    }
    // VIC panics on an unknown store; we answer 404.
    let r = answer(v.req(
        Method::HEAD,
        &format!(
            "/archive?store=nostore&deviceID=a&filterSpec={}",
            urlencode(&spec(&["etc"]))
        ),
    ))
    .await?;
    r.expect(404, None)?;
    Ok(())
}

/// Case 16: Op-ID must match VIC's unanchored pattern on every VIC route.
#[tokio::test]
async fn case16_op_id() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    for (method, path) in [
        (Method::GET, "/storage/s"),
        (Method::GET, "/storage/s/info/scratch"),
        (Method::GET, "/storage/s/usage"),
        (Method::GET, "/archive?store=s&deviceID=scratch&data=true"),
    ] {
        let r = answer(v.req(method.clone(), path).header("Op-ID", "abc")).await?;
        r.expect(422, None)?;
        ensure!(r.json()?["code"] == json!(605), "{}", r.text());
        ensure!(
            r.json()?["message"]
                .as_str()
                .is_some_and(|m| m.contains("should match '[0-9]+\\.[0-9]+'")),
            "{}",
            r.text()
        );
        answer(v.req(method, path).header("Op-ID", "12.34"))
            .await?
            .expect(200, None)?;
    }
    Ok(())
}

/// Case 17: WriteImage's content types.
#[tokio::test]
async fn case17_write_image_content_type() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    let raw = layer(&[("f", "x")])?;
    let q = format!("image_id=a&parent_id=scratch&sum={}", sum(&raw));
    answer(
        v.req(Method::POST, &format!("/storage/s?{q}"))
            .header("content-type", "application/json")
            .body(raw.clone()),
    )
    .await?
    .expect(415, None)?;
    answer(v.req(Method::POST, &format!("/storage/s?{q}")).body(raw))
        .await?
        .expect(201, None)?;
    // Required parameters come after the content type, in order.
    answer(v.req(Method::POST, "/storage/s?image_id=b&sum=x"))
        .await?
        .expect(
            422,
            Some(json!({"code": 602, "message": "parent_id in query is required"})),
        )?;
    Ok(())
}

// ---- Layers through the API ---------------------------------------------------------------

/// A gzip layer streamed through WriteImage reads back through GET /archive (whole image
/// and a diff with `data=false` and change markers), GetImageTar and StatPath.
#[tokio::test]
async fn layers_round_trip() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    let base = gzip(&layer(&[
        ("etc/", ""),
        ("etc/hosts", "127.0.0.1 localhost\n"),
        ("etc/motd", "hello\n"),
        ("bin/", ""),
        ("bin/sh", "->busybox"),
    ])?)?;
    let stream = futures::stream::iter(
        base.chunks(7)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    answer(
        v.req(
            Method::POST,
            &format!(
                "/storage/s?image_id=base&parent_id=scratch&sum={}",
                sum(&base)
            ),
        )
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream)),
    )
    .await?
    .expect(201, None)?;
    let top = layer(&[
        ("etc/hosts", "10.0.0.1 db\n"),
        ("etc/.wh.motd", ""),
        ("new", "n"),
    ])?;
    v.write(
        "s",
        &format!("image_id=top&parent_id=base&sum={}", sum(&top)),
        top,
    )
    .await?
    .expect(201, None)?;

    // The whole image, data and all; `store` may be the store's URL.
    let store_url = format!("{}/storage/images/s", v.h());
    let r = v
        .get(&format!(
            "/archive?store={store_url}&deviceID=top&data=true"
        ))
        .await?;
    r.expect(200, None)?;
    ensure!(r.header("content-type").as_deref() == Some("application/x-tar"));
    let all = entries(&r.body)?;
    let find =
        |es: &[(String, Vec<u8>, Option<String>)], p: &str| es.iter().find(|e| e.0 == p).cloned();
    ensure!(find(&all, "etc/hosts").map(|e| e.1) == Some(b"10.0.0.1 db\n".to_vec()));
    ensure!(find(&all, "etc/motd").is_none());
    ensure!(
        all.iter().all(|e| e.2.is_none()),
        "data=true carries no markers"
    );

    // The diff against base, headers only: A, C and D markers.
    let r = v
        .get("/archive?store=s&deviceID=top&ancestor=base&ancestorStore=ignored&data=0")
        .await?;
    r.expect(200, None)?;
    let diff = entries(&r.body)?;
    let mark = |p: &str| find(&diff, p).and_then(|e| e.2);
    ensure!(mark("etc/hosts").as_deref() == Some("C"), "{diff:?}");
    ensure!(mark("new").as_deref() == Some("A"), "{diff:?}");
    ensure!(mark("etc/.wh.motd").as_deref() == Some("D"), "{diff:?}");
    ensure!(diff.iter().all(|e| e.1.is_empty()));

    // A filter in VIC's wire form.
    let r = v
        .get(&format!(
            "/archive?store=s&deviceID=top&data=yes&filterSpec={}",
            urlencode(
                &FilterSpec {
                    inclusions: ["etc".to_owned()].into(),
                    exclusions: [String::new()].into(),
                    ..FilterSpec::default()
                }
                .encode()
            )
        ))
        .await?;
    let only: Vec<String> = entries(&r.body)?.into_iter().map(|e| e.0).collect();
    // Scratch's own files under etc/ (hostname, resolv.conf, ...) are part of the image.
    ensure!(
        only.iter().all(|p| p.starts_with("etc")) && only.iter().any(|p| p == "etc/hosts"),
        "{only:?}"
    );
    ensure!(
        !only.iter().any(|p| p == "etc/motd" || p == "new"),
        "{only:?}"
    );

    // GetImageTar: the raw gzip exactly.
    ensure!(v.get("/storage/s/tar/base").await?.body == base);

    // StatPath: a file, a directory, a symlink, a missing path.
    let stat = |p: &str| {
        answer(v.req(
            Method::HEAD,
            &format!(
                "/archive?store=s&deviceID=top&filterSpec={}",
                urlencode(&spec(&[p]))
            ),
        ))
    };
    let f = stat("etc/hosts").await?;
    f.expect(200, None)?;
    ensure!(f.header("name").as_deref() == Some("hosts"));
    ensure!(f.header("mode").as_deref() == Some("420"));
    ensure!(f.header("size").as_deref() == Some("12"));
    ensure!(f.header("modtime").as_deref() == Some("2023-11-14T22:13:20Z"));
    ensure!(f.header("linktarget").is_none());
    let d = stat("/etc/").await?;
    ensure!(
        d.header("mode").as_deref() == Some("2147484141"),
        "{:?}",
        d.headers
    );
    let l = stat("bin/sh").await?;
    ensure!(l.header("mode") == Some(((1u32 << 27) | 0o777).to_string()));
    ensure!(l.header("linktarget").as_deref() == Some("busybox"));
    stat("etc/motd").await?.expect(404, None)?;
    stat("etc/host").await?.expect(404, None)?;
    Ok(())
}

/// POST /archive imports into a writable layer; a committed image is refused with 409.
#[tokio::test]
async fn import_into_writable_layers_only() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    v.write_empty("s", "img", "scratch")
        .await?
        .expect(201, None)?;
    let store = StoreName::new("s")?;
    let image = v.storer.get_image(&store, &ImageId::new("img")?).await?;
    v.storer
        .create_writable(&image, &ImageId::new("rw")?)
        .await?;
    let tar = layer(&[("data/", ""), ("data/x", "imported")])?;
    let post = |device: &str, body: Vec<u8>| {
        answer(
            v.req(Method::POST, &format!("/archive?store=s&deviceID={device}"))
                .header("content-type", "application/x-tar")
                .body(body),
        )
    };
    post("rw", tar.clone()).await?.expect(200, None)?;
    let r = v.get("/archive?store=s&deviceID=rw&data=true").await?;
    let got = entries(&r.body)?;
    ensure!(
        got.iter().any(|e| e.0 == "data/x" && e.1 == b"imported"),
        "{got:?}"
    );
    let refused = post("img", tar.clone()).await?;
    refused.expect(409, None)?;
    ensure!(
        refused.json()?["message"]
            .as_str()
            .is_some_and(|m| m.contains("immutable"))
    );
    post("nope", tar.clone()).await?.expect(404, None)?;
    // A truncated tar is the client's error, filtered or not.
    post("rw", b"\x1f\x8b\x08".to_vec())
        .await?
        .expect(422, None)?;
    answer(
        v.req(
            Method::POST,
            &format!(
                "/archive?store=s&deviceID=rw&filterSpec={}",
                urlencode(
                    &FilterSpec::from_types([("data", imagestore::FilterType::Strip)])?.encode()
                )
            ),
        )
        .header("content-type", "application/x-tar")
        .body(b"\x1f\x8b\x08".to_vec()),
    )
    .await?
    .expect(422, None)?;
    answer(
        v.req(Method::POST, "/archive?store=s&deviceID=rw")
            .header("content-type", "application/x-tar"),
    )
    .await?
    .expect(
        422,
        Some(json!({"code": 602, "message": "archive in body is required"})),
    )?;
    answer(
        v.req(Method::POST, "/archive?store=s&deviceID=rw")
            .header("content-type", "application/json")
            .body(tar),
    )
    .await?
    .expect(415, None)?;
    Ok(())
}

/// Usage is the store's exact usage as a bare integer; JSON is Go's (escapes, newline);
/// metadata that is not UTF-8 reads with U+FFFD.
#[tokio::test]
async fn usage_and_go_json() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    let raw = layer(&[("f", "12345")])?;
    v.write(
        "s",
        &format!(
            "image_id=a&parent_id=scratch&sum={}&metadatakey=k&metadataval=%3Ca%26b%3E",
            sum(&raw)
        ),
        raw,
    )
    .await?
    .expect(201, None)?;
    let r = v.get("/storage/s/usage").await?;
    r.expect(200, None)?;
    let used = v.storer.image_storage_usage(&StoreName::new("s")?).await?;
    ensure!(r.text() == format!("{used}\n"), "{}", r.text());
    v.get("/storage/nope/usage").await?.expect(404, None)?;
    let g = v.get("/storage/s/info/a").await?;
    ensure!(
        g.text().contains(r#""k":"\u003ca\u0026b\u003e""#),
        "{}",
        g.text()
    );
    ensure!(g.header("content-type").as_deref() == Some("application/json"));
    Ok(())
}

/// ImageJoin checks its body as VIC binds it, then answers 501 on file:// (no virtual
/// machines; `tests/vic_vsphere.rs` joins on vsphere://).
#[tokio::test]
async fn image_join_is_not_implemented() -> Result<()> {
    let v = Vic::start().await?;
    v.create_store("s").await?;
    let join = |body: Value| {
        answer(
            v.req(Method::POST, "/storage/s/info/scratch")
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };
    join(json!({"handle": "h"})).await?.expect(
        422,
        Some(json!({"code": 602, "message": "deltaID in body is required"})),
    )?;
    let r = join(json!({"handle": "h", "deltaID": "c1"})).await?;
    r.expect(501, None)?;
    ensure!(
        r.json()?["message"]
            .as_str()
            .is_some_and(|m| m.contains("ImageJoin"))
    );
    answer(
        v.req(Method::POST, "/storage/s/info/nope")
            .header("content-type", "application/json")
            .body(json!({"handle": "h", "deltaID": "c1"}).to_string()),
    )
    .await?
    .expect(404, None)?;
    let s = v.get("/swagger.json").await?;
    ensure!(s.json()?["paths"]["/archive"]["head"]["operationId"] == json!("StatPath"));
    Ok(())
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
