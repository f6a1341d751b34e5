//! A small SOAP client for the vSphere API (vim25): login and re-login when the session is
//! gone, faults as typed values, task polling, and the property collector reads the datastore
//! needs. Requests are text templates; responses are read with namespace resolution.
//!
//! The datastore runs on the blocking pool, so every call blocks on the runtime it runs in
//! ([`block`]); the HTTP client is reqwest's async one, which may be dropped anywhere.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use imagestore_core::{Error, ObjectKind, Result, Url};
use roxmltree::Node;

use super::retry;
use super::xml::{self, MoRef, child, child_text, escape, find, text, xsi_type};

/// The scheme, used as the backend name in errors.
pub const BACKEND: &str = "vsphere";

/// How long a task may run before the client gives up on it.
const TASK_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `f` to completion on the runtime of the calling blocking thread.
pub fn block<F: Future>(f: F) -> Result<F::Output> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::backend(
            BACKEND,
            "the vsphere datastore must be used inside a tokio runtime",
            false,
        )
    })?;
    Ok(handle.block_on(f))
}

/// A fault the server answered with: its type (`FileNotFound`, `NotAuthenticated`, ...) and
/// its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The fault's type name.
    pub kind: String,
    /// What the server said (may be empty).
    pub message: String,
}

impl Fault {
    /// The fault held by element `node` (a `detail` child, or a `LocalizedMethodFault`'s
    /// `fault`), with `message` as the fault string.
    fn of(node: Node<'_, '_>, message: String) -> Fault {
        let kind = xsi_type(node).map(str::to_owned).unwrap_or_else(|| {
            let n = node.tag_name().name();
            n.strip_suffix("Fault").unwrap_or(n).to_owned()
        });
        Fault { kind, message }
    }

    /// True for a lost or missing session.
    pub fn is_not_authenticated(&self) -> bool {
        self.kind == "NotAuthenticated"
    }

    /// The core error for this fault about `what` (a datastore path, an object).
    pub fn into_error(self, what: &str) -> Error {
        let detail = if self.message.is_empty() {
            self.kind.clone()
        } else {
            format!("{}: {}", self.kind, self.message)
        };
        match self.kind.as_str() {
            "FileNotFound" => Error::not_found(ObjectKind::Path, what),
            "FileAlreadyExists" => Error::already_exists(ObjectKind::Path, what),
            "InvalidArgument"
            | "InvalidDatastorePath"
            | "InvalidDatastore"
            | "InvalidRequest"
            | "ManagedObjectNotFound" => Error::invalid(format!("{what}: {detail}")),
            "NotAuthenticated" | "InvalidLogin" | "NoPermission" => Error::backend(
                BACKEND,
                format!("{what}: not authenticated ({detail})"),
                false,
            ),
            _ => Error::backend(BACKEND, format!("{what}: {detail}"), false),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

/// What a call gives: the response body, or a fault.
pub type Answer = std::result::Result<String, Fault>;

/// Credentials for the session; the password never appears in `Debug` output.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// A session with a vCenter or ESXi SOAP endpoint.
#[derive(Debug)]
pub struct Soap {
    http: reqwest::Client,
    endpoint: Url,
    credentials: Credentials,
    /// `vmware_soap_session=...`, once logged in.
    cookie: Mutex<Option<String>>,
    logins: AtomicU64,
    session_manager: Mutex<MoRef>,
    property_collector: Mutex<MoRef>,
    /// Retries of a call that is safe to resend ([`super::retry`]).
    max_retries: u32,
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope \
         xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"urn:vim25\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}\
         </soapenv:Body></soapenv:Envelope>"
    )
}

/// An error of the transport of SOAP method `method`.
fn transport(endpoint: &Url, method: &str, e: impl fmt::Display, retryable: bool) -> Error {
    Error::backend(BACKEND, format!("{endpoint} {method}: {e}"), retryable)
}

/// The fault of a response, if it is one: a SOAP fault, or a property the collector could
/// not read because the session is gone (vcsim answers that with HTTP 200).
fn fault_of(status: u16, body: &str) -> Option<Fault> {
    let doc = xml::parse(body).ok()?;
    let root = doc.root_element();
    if let Some(f) = find(root, "Fault") {
        let message = child_text(f, "faultstring").unwrap_or_default();
        let detail = child(f, "detail").and_then(|d| d.children().find(|c| c.is_element()));
        return Some(match detail {
            Some(d) => Fault::of(d, message),
            None => Fault {
                kind: format!("HTTP {status}"),
                message,
            },
        });
    }
    root.descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "missingSet")
        .filter_map(|m| child(m, "fault").and_then(|f| child(f, "fault")))
        .map(|f| Fault::of(f, String::new()))
        .find(Fault::is_not_authenticated)
}

impl Soap {
    /// A client for the SOAP endpoint `endpoint` (`https://host/sdk`) that retries a call
    /// safe to resend up to `max_retries` times; nothing is sent yet.
    pub fn new(
        http: reqwest::Client,
        endpoint: Url,
        credentials: Credentials,
        max_retries: u32,
    ) -> Soap {
        Soap {
            http,
            endpoint,
            credentials,
            cookie: Mutex::new(None),
            logins: AtomicU64::new(0),
            session_manager: Mutex::new(MoRef::new("SessionManager", "SessionManager")),
            property_collector: Mutex::new(MoRef::new("PropertyCollector", "propertyCollector")),
            max_retries,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Uses `m` as the session manager (from the service content; ESXi's is not vCenter's).
    pub fn set_session_manager(&self, m: MoRef) {
        if let Ok(mut s) = self.session_manager.lock() {
            *s = m;
        }
    }

    /// Uses `m` as the property collector.
    pub fn set_property_collector(&self, m: MoRef) {
        if let Ok(mut s) = self.property_collector.lock() {
            *s = m;
        }
    }

    fn session_manager(&self) -> MoRef {
        self.session_manager
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|_| MoRef::new("SessionManager", "SessionManager"))
    }

    /// The property collector.
    pub fn property_collector(&self) -> MoRef {
        self.property_collector
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|_| MoRef::new("PropertyCollector", "propertyCollector"))
    }

    /// A call that needs no session (`RetrieveServiceContent`); a fault is an error.
    pub fn call_anonymous(&self, body: &str) -> Result<String> {
        let (status, _, text) = self.post(body, None)?;
        match fault_of(status, &text) {
            Some(f) => Err(f.into_error(self.endpoint.as_str())),
            None if status >= 400 => Err(Error::backend(
                BACKEND,
                format!(
                    "{} {}: HTTP {status}",
                    self.endpoint,
                    retry::method_of(body)
                ),
                status >= 500,
            )),
            None => Ok(text),
        }
    }

    /// The session cookie, logging in first if there is none.
    pub fn cookie(&self) -> Result<String> {
        if let Some(c) = self.cookie.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        self.login()
    }

    /// How many times this client logged in (the first login and every re-login).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Posts one SOAP body; a transient failure is retried when the call is safe to resend
    /// ([`retry::resend_safe`]) or was never received.
    fn post(&self, body: &str, cookie: Option<&str>) -> Result<(u16, Option<String>, String)> {
        let safe = retry::resend_safe(body);
        retry::retrying(self.max_retries, retry::method_of(body), || {
            let (status, set_cookie, text) = self.post_once(body, cookie, safe)?;
            // A 5xx without a SOAP fault came from the transport, not from the method; 503
            // says the request was not taken on.
            if status >= 500 && (safe || status == 503) && fault_of(status, &text).is_none() {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "{} {}: HTTP {status}",
                        self.endpoint,
                        retry::method_of(body)
                    ),
                    true,
                ));
            }
            Ok((status, set_cookie, text))
        })
    }

    /// One attempt of [`Soap::post`]; transport errors are retryable if `safe`, or if the
    /// connection could not be made.
    fn post_once(
        &self,
        body: &str,
        cookie: Option<&str>,
        safe: bool,
    ) -> Result<(u16, Option<String>, String)> {
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"urn:vim25/6.5\"")
            .body(envelope(body));
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        block(async {
            let resp = req.send().await.map_err(|e| {
                let not_sent = e.is_connect();
                transport(&self.endpoint, retry::method_of(body), e, safe || not_sent)
            })?;
            let status = resp.status().as_u16();
            let set_cookie = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.trim_start().starts_with("vmware_soap_session="))
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_owned());
            let text = resp
                .text()
                .await
                .map_err(|e| transport(&self.endpoint, retry::method_of(body), e, safe))?;
            Ok((status, set_cookie, text))
        })?
    }

    /// Logs in with the credentials, without any cookie (a live one would make the server
    /// refuse the login), and keeps the new session's cookie.
    fn login(&self) -> Result<String> {
        let body = format!(
            "<Login>{}{}{}</Login>",
            xml::moref("_this", &self.session_manager()),
            xml::el("userName", &self.credentials.user),
            xml::el("password", &self.credentials.password)
        );
        let (status, cookie, text) = self.post(&body, None)?;
        if let Some(f) = fault_of(status, &text) {
            return Err(Error::backend(
                BACKEND,
                format!(
                    "{}: login as {:?} failed ({f})",
                    self.endpoint, self.credentials.user
                ),
                false,
            ));
        }
        let cookie = cookie.ok_or_else(|| {
            Error::backend(
                BACKEND,
                format!("{}: the login answer set no session cookie", self.endpoint),
                false,
            )
        })?;
        self.logins.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.cookie.lock() {
            *c = Some(cookie.clone());
        }
        Ok(cookie)
    }

    /// Sends one method call (the element inside `soapenv:Body`); logs in first if needed,
    /// and once more if the server says the session is gone.
    pub fn call(&self, body: &str) -> Result<Answer> {
        for attempt in 0..2 {
            let cookie = self.cookie()?;
            let (status, _, text) = self.post(body, Some(&cookie))?;
            match fault_of(status, &text) {
                Some(f) if f.is_not_authenticated() && attempt == 0 => {
                    if let Ok(mut c) = self.cookie.lock() {
                        *c = None;
                    }
                }
                Some(f) => return Ok(Err(f)),
                None if status >= 400 => {
                    return Err(Error::backend(
                        BACKEND,
                        format!(
                            "{} {}: HTTP {status}",
                            self.endpoint,
                            retry::method_of(body)
                        ),
                        status >= 500,
                    ));
                }
                None => return Ok(Ok(text)),
            }
        }
        Err(Error::backend(
            BACKEND,
            format!(
                "{}: the session was lost again right after a login",
                self.endpoint
            ),
            true,
        ))
    }

    /// [`Soap::call`], with any fault as an error about `what`.
    pub fn call_ok(&self, body: &str, what: &str) -> Result<String> {
        self.call(body)?.map_err(|f| f.into_error(what))
    }

    /// Ends the session without waiting for the answer, if a runtime is there to send it
    /// (on drop, where blocking is not allowed); otherwise the session times out.
    pub fn logout_detached(&self) {
        let Some(cookie) = self.cookie.lock().ok().and_then(|mut c| c.take()) else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let req = self
            .http
            .post(self.endpoint.clone())
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"urn:vim25/6.5\"")
            .header("Cookie", cookie)
            .body(envelope(&format!(
                "<Logout>{}</Logout>",
                xml::moref("_this", &self.session_manager())
            )));
        handle.spawn(async move {
            let _ = req.send().await;
        });
    }

    /// The key of this client's session (logging in first if needed).
    pub fn session_key(&self) -> Result<String> {
        let sm = self.session_manager();
        let props = self.properties(&sm, &["currentSession"])?;
        props
            .into_iter()
            .find(|(k, _)| k == "currentSession")
            .and_then(|(_, v)| {
                let doc = xml::parse(&v).ok()?;
                child_text(doc.root_element(), "key")
            })
            .ok_or_else(|| Error::backend(BACKEND, "the server reports no current session", false))
    }

    /// Ends another session, by its key (an administrator's call; it lets tests take a
    /// client's session away from it).
    pub fn terminate_session(&self, key: &str) -> Result<()> {
        let body = format!(
            "<TerminateSession>{}{}</TerminateSession>",
            xml::moref("_this", &self.session_manager()),
            xml::el("sessionId", key)
        );
        self.call_ok(&body, "terminating a session").map(|_| ())
    }

    /// The `returnval` morefs of a response (a `FindByInventoryPath`, a `_Task` call).
    pub fn returnval(body: &str) -> Option<MoRef> {
        let doc = xml::parse(body).ok()?;
        let node = find(doc.root_element(), "returnval")?;
        MoRef::of(node)
    }

    /// Properties `paths` of object `obj`, as `(name, val element XML)` pairs; absent
    /// properties are left out.
    pub fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<Vec<(String, String)>> {
        let mut spec = format!("<propSet><type>{}</type>", escape(&obj.kind));
        for p in paths {
            spec.push_str(&xml::el("pathSet", p));
        }
        spec.push_str("</propSet>");
        let body = format!(
            "<RetrievePropertiesEx>{}<specSet>{spec}<objectSet>{}</objectSet></specSet>\
             <options/></RetrievePropertiesEx>",
            xml::moref("_this", &self.property_collector()),
            xml::moref("obj", obj)
        );
        let text = self.call_ok(&body, &format!("{} {}", obj.kind, obj.value))?;
        let doc = xml::parse(&text).map_err(|e| bad_xml(&self.endpoint, e))?;
        let mut out = Vec::new();
        for ps in doc
            .root_element()
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "propSet")
        {
            if let (Some(name), Some(val)) = (child_text(ps, "name"), child(ps, "val")) {
                let range = val.range();
                out.push((name, text[range].to_owned()));
            }
        }
        Ok(out)
    }

    /// Waits for task `task` to finish: its `info.result` element XML (if it has one), or
    /// the task's fault. `what` names the work in errors.
    pub fn wait_task(&self, task: &MoRef, what: &str) -> Result<TaskAnswer> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let props = self.properties(task, &["info.state", "info.error", "info.result"])?;
            let get = |n: &str| props.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let state =
                get("info.state").and_then(|v| xml::parse(&v).ok().map(|d| text(d.root_element())));
            match state.as_deref() {
                Some("success") => return Ok(Ok(get("info.result"))),
                Some("error") => {
                    let fault = get("info.error")
                        .and_then(|v| {
                            let doc = xml::parse(&v).ok()?;
                            let f = child(doc.root_element(), "fault")?;
                            let message = child_text(doc.root_element(), "localizedMessage")
                                .unwrap_or_default();
                            Some(Fault::of(f, message))
                        })
                        .unwrap_or(Fault {
                            kind: "TaskFailed".into(),
                            message: String::new(),
                        });
                    return Ok(Err(fault));
                }
                _ => {}
            }
            if started.elapsed() > TASK_TIMEOUT {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "{what}: task {} did not finish in {TASK_TIMEOUT:?}",
                        task.value
                    ),
                    true,
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Calls a `_Task` method and waits for it: the task's result element XML, or the fault
    /// of the call or of the task.
    pub fn run_task(&self, body: &str, what: &str) -> Result<TaskAnswer> {
        let text = match self.call(body)? {
            Ok(t) => t,
            Err(f) => return Ok(Err(f)),
        };
        let task = Soap::returnval(&text).ok_or_else(|| {
            Error::backend(BACKEND, format!("{what}: the answer names no task"), false)
        })?;
        self.wait_task(&task, what)
    }

    /// [`Soap::run_task`], with any fault as an error about `what`.
    pub fn run_task_ok(&self, body: &str, what: &str) -> Result<Option<String>> {
        self.run_task(body, what)?.map_err(|f| f.into_error(what))
    }
}

/// What a task gives: its result element XML (if any), or a fault.
pub type TaskAnswer = std::result::Result<Option<String>, Fault>;

/// An error for a response that is not the XML it should be.
pub fn bad_xml(endpoint: &Url, e: impl fmt::Display) -> Error {
    Error::backend(
        BACKEND,
        format!("{endpoint}: unreadable answer: {e}"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_from_details_and_missing_sets() {
        let soap = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>mkdir: file exists</faultstring><detail><FileAlreadyExistsFault xmlns="urn:vim25" xsi:type="FileAlreadyExists"><file>[ds] d1</file></FileAlreadyExistsFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(
            fault_of(500, soap),
            Some(Fault {
                kind: "FileAlreadyExists".into(),
                message: "mkdir: file exists".into()
            })
        );
        let missing = r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="Task">task-93</obj><missingSet><path>info.state</path><fault><fault xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="NotAuthenticated"><object type="Task">task-93</object></fault></fault></missingSet></objects></returnval></RetrievePropertiesExResponse>"#;
        assert!(fault_of(200, missing).is_some_and(|f| f.is_not_authenticated()));
        assert_eq!(fault_of(200, "<ok/>"), None);
        let f = |kind: &str| {
            Fault {
                kind: kind.into(),
                message: String::new(),
            }
            .into_error("[ds] x")
        };
        assert!(matches!(f("FileNotFound"), Error::NotFound { .. }));
        assert!(matches!(
            f("FileAlreadyExists"),
            Error::AlreadyExists { .. }
        ));
        assert!(matches!(f("InvalidArgument"), Error::InvalidArgument(_)));
        assert!(matches!(
            f("InvalidDatastorePath"),
            Error::InvalidArgument(_)
        ));
        assert!(
            matches!(f("NotAuthenticated"), Error::Backend { message, retryable: false, .. } if message.contains("not authenticated"))
        );
        assert!(matches!(f("CannotDeleteFile"), Error::Backend { .. }));
    }

    #[test]
    fn credentials_are_not_printed() {
        let c = Credentials {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
