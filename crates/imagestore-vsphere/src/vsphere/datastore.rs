//! [`VsphereDatastore`]: the datastore behind vCenter or ESXi, with its session: core's
//! `Storage` and the disks' `Datastore` over SOAP calls and the `/folder` HTTP endpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::{Error, JoinedImage, ObjectKind, Result, Url};
use tokio::io::AsyncWriteExt;

use super::cache::DiskCache;
use super::config::VsphereConfig;
use super::soap::{self, BACKEND, Soap, block};
use super::xml::{self, MoRef, child, find, text};
use super::{cache, config, locks, retry, vms};
use crate::datastore::{Datastore, DsLock, DsPath, Stat, Storage};
use crate::vmdk::ReadAt;

/// The options of `vsphere://` URLs, none of them secret (shown in messages).
pub const VSPHERE_OPTIONS: &[&str] = &[
    "allow_http",
    "insecure",
    "capacity_kib",
    "format",
    "work",
    "cache_mib",
    "max_retries",
];

/// `url` for messages: no password, and only the values of [`VSPHERE_OPTIONS`]
/// ([`imagestore_core::redact`]).
pub fn redacted(url: &Url) -> String {
    imagestore_core::redact::redact_options(url, VSPHERE_OPTIONS)
}

/// The morefs of the service content this client uses.
#[derive(Debug, Clone)]
pub(super) struct Service {
    pub(super) root_folder: MoRef,
    pub(super) property_collector: MoRef,
    pub(super) session_manager: MoRef,
    pub(super) file_manager: MoRef,
    pub(super) search_index: MoRef,
    pub(super) view_manager: MoRef,
    pub(super) virtual_disk_manager: MoRef,
}

/// A datastore on vSphere, and the session used to reach it.
#[derive(Debug)]
pub struct VsphereDatastore {
    pub(super) soap: Soap,
    pub(super) http: reqwest::Client,
    pub(super) config: VsphereConfig,
    pub(super) base_url: Url,
    pub(super) service: Service,
    pub(super) datacenter: MoRef,
    pub(super) datastore: MoRef,
    pub(super) browser: MoRef,
    pub(super) work: PathBuf,
    pub(super) cache: DiskCache,
}

fn http_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, format!("{what}: {e}"), true)
}

fn status_err(what: &str, status: reqwest::StatusCode) -> Error {
    Error::backend(
        BACKEND,
        format!("{what}: HTTP {status}"),
        status.is_server_error(),
    )
}

/// A short random name for temporary files.
impl VsphereDatastore {
    /// Connects: reads the service content, logs in, finds the datacenter, the datastore and
    /// its browser, and creates the folder. Blocks; call it from the blocking pool.
    pub fn connect(config: VsphereConfig) -> Result<VsphereDatastore> {
        imagestore_core::tls::install_crypto_provider();
        // No redirects: `/folder` answers a folder with one, which is how `stat` tells it.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(30))
            .pool_idle_timeout(std::time::Duration::from_secs(60));
        if config.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| Error::backend(BACKEND, format!("HTTP client: {e}"), false))?;
        let endpoint = config
            .server
            .join("/sdk")
            .map_err(|e| Error::invalid(e.to_string()))?;
        let soap = Soap::new(
            http.clone(),
            endpoint,
            config.credentials.clone(),
            config.max_retries,
        );
        let service = read_service(&soap)?;
        soap.set_session_manager(service.session_manager.clone());
        soap.set_property_collector(service.property_collector.clone());
        let find_path = |path: &str| -> Result<Option<MoRef>> {
            let body = format!(
                "<FindByInventoryPath>{}{}</FindByInventoryPath>",
                xml::moref("_this", &service.search_index),
                xml::el("inventoryPath", path)
            );
            Ok(Soap::returnval(&soap.call_ok(&body, path)?))
        };
        let datacenter = find_path(&config.datacenter)?
            .filter(|m| m.kind == "Datacenter")
            .ok_or_else(|| {
                Error::not_found(
                    ObjectKind::Store,
                    format!("datacenter {}", config.datacenter),
                )
            })?;
        let datastore = find_path(&format!(
            "{}/datastore/{}",
            config.datacenter, config.datastore
        ))?
        .filter(|m| m.kind == "Datastore")
        .ok_or_else(|| {
            Error::not_found(
                ObjectKind::Store,
                format!("datastore {} in {}", config.datastore, config.datacenter),
            )
        })?;
        let browser = soap
            .properties(&datastore, &["browser"])?
            .into_iter()
            .find(|(k, _)| k == "browser")
            .and_then(|(_, v)| {
                xml::parse(&v)
                    .ok()
                    .and_then(|d| MoRef::of(d.root_element()))
            })
            .ok_or_else(|| {
                Error::backend(
                    BACKEND,
                    format!("datastore {} has no browser", config.datastore),
                    false,
                )
            })?;
        let base_url = config.base_url()?;
        let work = config
            .work
            .clone()
            .unwrap_or_else(|| config::default_work(&base_url));
        std::fs::create_dir_all(&work).map_err(|e| Error::io(BACKEND, &work, e))?;
        let cache = DiskCache::new(work.join("disks"), config.cache_bytes)?;
        let ds = VsphereDatastore {
            soap,
            http,
            config,
            base_url,
            service,
            datacenter,
            datastore,
            browser,
            work,
            cache,
        };
        ds.mkdir_all(&ds.folder_path())?;
        Ok(ds)
    }

    /// The session (for checks of its behaviour).
    pub fn soap(&self) -> &Soap {
        &self.soap
    }

    /// The datastore path of the backend's folder: `[ds] folder`.
    pub(super) fn folder_path(&self) -> String {
        format!("[{}] {}", self.config.datastore, self.config.folder)
    }

    /// `[ds] folder/path`.
    pub fn ds_path(&self, path: &DsPath) -> String {
        if path.as_str().is_empty() {
            self.folder_path()
        } else {
            format!("{}/{}", self.folder_path(), path.as_str())
        }
    }

    /// The `/folder` URL of `path`.
    pub(super) fn file_url(&self, path: &DsPath) -> Result<Url> {
        let mut u = self.config.server.clone();
        {
            let mut segs = u
                .path_segments_mut()
                .map_err(|()| Error::invalid("the server URL cannot have a path"))?;
            segs.clear().push("folder");
            segs.extend(self.config.folder.split('/'));
            if !path.as_str().is_empty() {
                segs.extend(path.as_str().split('/'));
            }
        }
        u.query_pairs_mut()
            .append_pair("dcPath", &self.config.datacenter)
            .append_pair("dsName", &self.config.datastore);
        Ok(u)
    }

    pub(super) fn dc(&self) -> String {
        xml::moref("datacenter", &self.datacenter)
    }

    pub(super) fn mkdir_all(&self, ds_path: &str) -> Result<()> {
        let body = format!(
            "<MakeDirectory>{}{}{}<createParentDirectories>true</createParentDirectories></MakeDirectory>",
            xml::moref("_this", &self.service.file_manager),
            xml::el("name", ds_path),
            self.dc()
        );
        match self.soap.call(&body)? {
            Ok(_) => Ok(()),
            Err(f) if f.kind == "FileAlreadyExists" => Ok(()),
            Err(f) => Err(f.into_error(ds_path)),
        }
    }

    /// Deletes a file or folder (recursively); false if it was absent. Refuses the datastore
    /// and the backend's folder themselves.
    pub(super) fn delete(&self, path: &DsPath) -> Result<bool> {
        if path.as_str().is_empty() {
            return Err(Error::invalid(format!(
                "refusing to delete the backend's folder {}",
                self.folder_path()
            )));
        }
        let name = self.ds_path(path);
        let body = format!(
            "<DeleteDatastoreFile_Task>{}{}{}</DeleteDatastoreFile_Task>",
            xml::moref("_this", &self.service.file_manager),
            xml::el("name", &name),
            self.dc()
        );
        self.run_removal(&body, &name)
    }

    /// Runs a task that removes `name`: true when it did, false when `name` was absent.
    pub(super) fn run_removal(&self, body: &str, name: &str) -> Result<bool> {
        match self.soap.run_task(body, name)? {
            Ok(_) => Ok(true),
            Err(f) if f.kind == "FileNotFound" => Ok(false),
            Err(f) => Err(f.into_error(name)),
        }
    }

    /// Moves `from` to `to`; with `force` an existing `to` is replaced, without it the move
    /// fails with `FileAlreadyExists` (returned as false).
    pub(super) fn rename(&self, from: &DsPath, to: &DsPath, force: bool) -> Result<bool> {
        let (src, dst) = (self.ds_path(from), self.ds_path(to));
        let body = format!(
            "<MoveDatastoreFile_Task>{}{}{}{}{}<force>{force}</force></MoveDatastoreFile_Task>",
            xml::moref("_this", &self.service.file_manager),
            xml::el("sourceName", &src),
            xml::moref("sourceDatacenter", &self.datacenter),
            xml::el("destinationName", &dst),
            xml::moref("destinationDatacenter", &self.datacenter),
        );
        match self.soap.run_task(&body, &dst)? {
            Ok(_) => Ok(true),
            Err(f) if f.kind == "FileAlreadyExists" && !force => Ok(false),
            Err(f) => Err(f.into_error(&dst)),
        }
    }

    /// Uploads the body `body()` makes (`len` bytes) to `path` through `/folder`; a transient
    /// failure sends a new body again (the callers upload to temporary names only).
    pub(super) fn upload(
        &self,
        path: &DsPath,
        body: &dyn Fn() -> Result<reqwest::Body>,
        len: u64,
    ) -> Result<()> {
        let url = self.file_url(path)?;
        let what = self.ds_path(path);
        retry::retrying(self.config.max_retries, &what, || {
            let cookie = self.soap.cookie()?;
            let req = self
                .http
                .put(url.clone())
                .header("Cookie", cookie)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", len)
                .body(body()?);
            block(async {
                let resp = req.send().await.map_err(|e| http_err(&what, e))?;
                if !resp.status().is_success() {
                    return Err(status_err(&what, resp.status()));
                }
                Ok(())
            })?
        })
    }

    /// One attempt of `stat`: `HEAD` of `path`; a folder answers with a redirect.
    pub(super) fn stat_once(&self, path: &DsPath) -> Result<Option<Stat>> {
        let url = self.file_url(path)?;
        let what = self.ds_path(path);
        let cookie = self.soap.cookie()?;
        let req = self.http.head(url).header("Cookie", cookie);
        block(async {
            let resp = req.send().await.map_err(|e| http_err(&what, e))?;
            let s = resp.status();
            if s == reqwest::StatusCode::NOT_FOUND {
                Ok(None)
            } else if s.is_redirection() {
                Ok(Some(Stat {
                    is_dir: true,
                    size: 0,
                    modified_unix_ms: None,
                }))
            } else if s.is_success() {
                // The header itself: a HEAD answer has no body to take a length from.
                let size = resp
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let modified_unix_ms = resp
                    .headers()
                    .get(reqwest::header::LAST_MODIFIED)
                    .and_then(|v| v.to_str().ok())
                    .and_then(http_date_unix_ms);
                Ok(Some(Stat {
                    is_dir: false,
                    size,
                    modified_unix_ms,
                }))
            } else {
                Err(status_err(&what, s))
            }
        })?
    }

    /// A temporary sibling of `path`.
    pub(super) fn temp_of(&self, path: &DsPath) -> DsPath {
        path.parent()
            .child(&crate::datastore::temp_name(path.name()))
    }

    /// Uploads to a temporary sibling, then moves it onto `path`: readers see the old file or
    /// the whole new one. With `replace` false an existing `path` is left alone (false).
    pub(super) fn put_then_move(
        &self,
        path: &DsPath,
        body: &dyn Fn() -> Result<reqwest::Body>,
        len: u64,
        replace: bool,
    ) -> Result<bool> {
        let tmp = self.temp_of(path);
        let r = self
            .upload(&tmp, body, len)
            .and_then(|()| self.rename(&tmp, path, replace));
        if !matches!(r, Ok(true)) {
            let _ = self.delete(&tmp);
        }
        r
    }

    /// GET of `path`: the response, or `None` for 404; `range` asks for part of it.
    pub(super) fn get(
        &self,
        path: &DsPath,
        range: Option<&str>,
    ) -> Result<Option<reqwest::Response>> {
        let url = self.file_url(path)?;
        let what = self.ds_path(path);
        let cookie = self.soap.cookie()?;
        let mut req = self.http.get(url).header("Cookie", cookie);
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        block(async {
            let resp = req.send().await.map_err(|e| http_err(&what, e))?;
            match resp.status() {
                s if s == reqwest::StatusCode::NOT_FOUND => Ok(None),
                s if s.is_success() => Ok(Some(resp)),
                s => Err(status_err(&what, s)),
            }
        })?
    }

    /// Streams `path` into a new local file `to`; its size. Retried whole on a transient
    /// failure.
    pub(super) fn download(&self, path: &DsPath, to: &Path) -> Result<u64> {
        let what = self.ds_path(path);
        retry::retrying(self.config.max_retries, &what, || {
            self.download_once(path, to)
        })
    }

    /// One attempt of [`VsphereDatastore::download`].
    pub(super) fn download_once(&self, path: &DsPath, to: &Path) -> Result<u64> {
        let what = self.ds_path(path);
        let Some(mut resp) = self.get(path, None)? else {
            return Err(Error::not_found(ObjectKind::Path, &what));
        };
        block(async {
            let mut f = tokio::fs::File::create(to)
                .await
                .map_err(|e| Error::io(BACKEND, to, e))?;
            let mut n = 0u64;
            while let Some(chunk) = resp.chunk().await.map_err(|e| http_err(&what, e))? {
                f.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io(BACKEND, to, e))?;
                n += chunk.len() as u64;
            }
            f.flush().await.map_err(|e| Error::io(BACKEND, to, e))?;
            Ok(n)
        })?
    }

    /// The first bytes of `path` and its total size, or `None` if absent.
    pub(super) fn head_bytes(&self, path: &DsPath, n: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let what = self.ds_path(path);
        retry::retrying(self.config.max_retries, &what, || {
            self.head_bytes_once(path, n)
        })
    }

    /// One attempt of [`VsphereDatastore::head_bytes`].
    pub(super) fn head_bytes_once(&self, path: &DsPath, n: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let what = self.ds_path(path);
        let Some(resp) = self.get(path, Some(&format!("bytes=0-{}", n - 1)))? else {
            return Ok(None);
        };
        let total = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.parse::<u64>().ok())
            .or(resp.content_length());
        let bytes = block(resp.bytes())?.map_err(|e| http_err(&what, e))?;
        let total = total.unwrap_or(bytes.len() as u64);
        Ok(Some((bytes.to_vec(), total)))
    }

    /// The VMs with a disk backed by the disk at `path` (directly or as a parent of theirs).
    pub fn vms_using(&self, path: &DsPath) -> Result<Vec<String>> {
        let file = self.ds_path(path);
        Ok(vms::list(self)?
            .into_iter()
            .filter(|vm| vm.disks.iter().any(|d| d.chain.contains(&file)))
            .map(|vm| vm.name)
            .collect())
    }
}

/// Reads the service content (no session needed).
fn read_service(soap: &Soap) -> Result<Service> {
    let body = "<RetrieveServiceContent><_this type=\"ServiceInstance\">ServiceInstance</_this></RetrieveServiceContent>";
    let text = soap.call_anonymous(body)?;
    let doc = xml::parse(&text).map_err(|e| soap::bad_xml(soap.endpoint(), e))?;
    let rv = find(doc.root_element(), "returnval")
        .ok_or_else(|| soap::bad_xml(soap.endpoint(), "no service content"))?;
    let get = |name: &str| {
        child(rv, name).and_then(MoRef::of).ok_or_else(|| {
            soap::bad_xml(
                soap.endpoint(),
                format!("the service content has no {name}"),
            )
        })
    };
    Ok(Service {
        root_folder: get("rootFolder")?,
        property_collector: get("propertyCollector")?,
        session_manager: get("sessionManager")?,
        file_manager: get("fileManager")?,
        search_index: get("searchIndex")?,
        view_manager: get("viewManager")?,
        virtual_disk_manager: get("virtualDiskManager")?,
    })
}

impl Storage for VsphereDatastore {
    fn scheme(&self) -> &'static str {
        BACKEND
    }

    fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    fn url(&self, path: &DsPath) -> Url {
        let mut u = self.base_url.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.extend(path.as_str().split('/').filter(|s| !s.is_empty()));
        }
        u
    }

    fn path_of(&self, url: &Url) -> Option<DsPath> {
        let base: Vec<String> = self.base_url.path_segments()?.map(str::to_owned).collect();
        let segs: Vec<String> = url.path_segments()?.map(str::to_owned).collect();
        if url.scheme() != BACKEND
            || url.host_str() != self.base_url.host_str()
            || url.port() != self.base_url.port()
            || segs.len() <= base.len()
            || segs[..base.len()] != base[..]
        {
            return None;
        }
        let rest: Vec<String> = segs[base.len()..]
            .iter()
            .map(|s| imagestore_core::backend::storage::decode_name(s))
            .collect::<Option<_>>()?;
        DsPath::parse(&rest.join("/")).ok()
    }

    fn shared_writers(&self) -> bool {
        false
    }

    fn describe(&self, path: &DsPath) -> String {
        self.ds_path(path)
    }

    fn disk_users(&self, path: &DsPath) -> Result<Vec<String>> {
        Ok(self
            .vms_using(path)?
            .into_iter()
            .map(|vm| format!("vm {vm}"))
            .collect())
    }

    fn mkdir(&self, path: &DsPath) -> Result<bool> {
        let name = self.ds_path(path);
        let body = format!(
            "<MakeDirectory>{}{}{}<createParentDirectories>false</createParentDirectories></MakeDirectory>",
            xml::moref("_this", &self.service.file_manager),
            xml::el("name", &name),
            self.dc()
        );
        match self.soap.call(&body)? {
            Ok(_) => Ok(true),
            Err(f) if f.kind == "FileAlreadyExists" => Ok(false),
            Err(f) => Err(f.into_error(&name)),
        }
    }

    fn stat(&self, path: &DsPath) -> Result<Option<Stat>> {
        let what = self.ds_path(path);
        retry::retrying(self.config.max_retries, &what, || self.stat_once(path))
    }

    fn read(&self, path: &DsPath) -> Result<Option<Vec<u8>>> {
        let what = self.ds_path(path);
        retry::retrying(self.config.max_retries, &what, || {
            let Some(resp) = self.get(path, None)? else {
                return Ok(None);
            };
            let bytes = block(resp.bytes())?.map_err(|e| http_err(&what, e))?;
            Ok(Some(bytes.to_vec()))
        })
    }

    fn write(&self, path: &DsPath, bytes: &[u8]) -> Result<()> {
        let body = bytes::Bytes::copy_from_slice(bytes);
        let make = || Ok(reqwest::Body::from(body.clone()));
        self.put_then_move(path, &make, bytes.len() as u64, true)
            .map(|_| ())
    }

    fn create_new(&self, path: &DsPath, bytes: &[u8]) -> Result<bool> {
        if self.stat(path)?.is_some() {
            return Ok(false);
        }
        let body = bytes::Bytes::copy_from_slice(bytes);
        let make = || Ok(reqwest::Body::from(body.clone()));
        self.put_then_move(path, &make, bytes.len() as u64, false)
    }

    fn list(&self, path: &DsPath) -> Result<Vec<String>> {
        let name = self.ds_path(path);
        let body = format!(
            "<SearchDatastore_Task>{}{}<searchSpec><matchPattern>*</matchPattern></searchSpec></SearchDatastore_Task>",
            xml::moref("_this", &self.browser),
            xml::el("datastorePath", &name),
        );
        let result = match self.soap.run_task(&body, &name)? {
            Ok(r) => r.unwrap_or_default(),
            Err(f) if f.kind == "FileNotFound" => return Ok(Vec::new()),
            Err(f) => return Err(f.into_error(&name)),
        };
        let doc = xml::parse(&result).map_err(|e| soap::bad_xml(self.soap.endpoint(), e))?;
        let mut names: Vec<String> = doc
            .root_element()
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "file")
            .filter_map(|f| child(f, "path").map(text))
            .filter(|n| DsPath::root().join(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn remove_file(&self, path: &DsPath) -> Result<bool> {
        self.delete(path)
    }

    fn remove_all(&self, path: &DsPath) -> Result<()> {
        self.delete(path).map(|_| ())
    }

    fn lock(&self, path: &DsPath, range: u64, wait: bool) -> Result<Option<DsLock>> {
        Ok(locks::lock(format!("{}#{range}", self.url(path)), wait))
    }
}

/// Disks are uploaded whole and read through the local disk cache.
impl Datastore for VsphereDatastore {
    fn put_file(&self, local: &Path, path: &DsPath) -> Result<u64> {
        let size = std::fs::metadata(local)
            .map_err(|e| Error::io(BACKEND, local, e))?
            .len();
        let make = || {
            let file =
                block(tokio::fs::File::open(local))?.map_err(|e| Error::io(BACKEND, local, e))?;
            Ok(reqwest::Body::wrap_stream(
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
            ))
        };
        self.put_then_move(path, &make, size, true)?;
        // The disk just uploaded is what the next layer's build reads first.
        self.cache.adopt(local, &self.ds_path(path))?;
        Ok(size)
    }

    fn attach_child_disk(&self, vm: &str, parent: &DsPath, child: &DsPath) -> Result<JoinedImage> {
        let joined = self.join_disk(vm, parent, child)?;
        Ok(JoinedImage {
            vm: joined.vm,
            disk: joined.file,
            parent: joined.parent,
        })
    }

    fn open(&self, path: &DsPath) -> Result<Arc<dyn ReadAt>> {
        let name = self.ds_path(path);
        let (head, size) = self
            .head_bytes(path, cache::HEAD_BYTES)?
            .ok_or_else(|| Error::not_found(ObjectKind::Path, &name))?;
        let file = self
            .cache
            .get_or_fetch(&name, &head, size, |to| self.download(path, to))?;
        Ok(Arc::new(file))
    }

    fn work_dir(&self) -> PathBuf {
        self.work.clone()
    }

    fn create_base_disk(&self, path: &DsPath, capacity_kib: u64) -> Result<u32> {
        VsphereDatastore::create_base_disk(self, path, capacity_kib)
    }
}

impl Drop for VsphereDatastore {
    fn drop(&mut self) {
        self.soap.logout_detached();
    }
}

/// Milliseconds since the Unix epoch of an HTTP date in its preferred form
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7); `None` for anything else.
fn http_date_unix_ms(s: &str) -> Option<u64> {
    let mut it = s.split_ascii_whitespace().skip(1);
    let day: u64 = it.next()?.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| Some(*m) == it.clone().next())? as u64
        + 1;
    it.next();
    let year: u64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|v| v.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT"
        || !(1..=31).contains(&day)
        || year < 1970
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(((days * 24 + h) * 60 + m) * 60_000 + sec * 1000)
}

#[cfg(test)]
mod http_date_tests {
    #[test]
    fn http_dates_parse() {
        assert_eq!(
            super::http_date_unix_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(
            super::http_date_unix_ms("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(0)
        );
        assert_eq!(
            super::http_date_unix_ms("Mon, 29 Feb 2016 12:00:00 GMT"),
            Some(1_456_747_200_000)
        );
        assert_eq!(super::http_date_unix_ms("yesterday"), None);
        assert_eq!(
            super::http_date_unix_ms("Sun, 06 Nov 1994 08:49:37 PST"),
            None
        );
    }
}
