//! Sending again what is safe to send again.
//!
//! A request that failed in transit (connection refused or reset, a timeout, an HTTP 5xx
//! without a SOAP fault) is retried with exponential back-off when sending it twice cannot do
//! something twice:
//!
//! * file transfers on `/folder`: `GET` and `HEAD` read, and every `PUT` goes to a temporary
//!   name that is only moved into place afterwards;
//! * SOAP methods that only read ([`resend_safe`]), and `CreateContainerView` and `Login`
//!   (a second view or session just expires);
//! * any request the server never received (the connection could not be made).
//!
//! Other SOAP methods (moves, deletes, disk and VM changes) are not resent after the server
//! may have seen them: the error reaches the caller, and the store's protocol leaves nothing
//! visible that a later retry of the whole operation would not complete or replace.

use std::time::Duration;

use imagestore_core::{Error, Result};
use tracing::debug;

/// Retries of one request when the URL does not say (`max_retries=`).
pub const DEFAULT_MAX_RETRIES: u32 = 4;

/// The first pause; each next one is four times longer, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// SOAP methods a lost answer can be asked for again: they read, or (`CreateContainerView`,
/// `Login`) make a server object that a second copy of only leaves to expire.
const READ_ONLY_METHODS: &[&str] = &[
    "RetrieveServiceContent",
    "RetrievePropertiesEx",
    "RetrieveProperties",
    "ContinueRetrievePropertiesEx",
    "FindByInventoryPath",
    "SearchDatastore_Task",
    "SearchDatastoreSubFolders_Task",
    "QueryVirtualDiskInfo_Task",
    "CreateContainerView",
    "Login",
];

/// The method a SOAP body calls: the name of its first element.
pub fn method_of(body: &str) -> &str {
    let rest = body.trim_start().trim_start_matches('<');
    let end = rest
        .find(|c: char| c == '>' || c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Whether a SOAP call may be sent again after the server may have received it.
pub fn resend_safe(body: &str) -> bool {
    READ_ONLY_METHODS.contains(&method_of(body))
}

/// Whether an error is worth another attempt.
pub fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Backend {
            retryable: true,
            ..
        }
    )
}

/// Runs `attempt` until it succeeds, fails for good, or has failed `1 + max_retries` times.
/// `what` names the request in the log.
pub fn retrying<T>(
    max_retries: u32,
    what: &str,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut pause = FIRST_PAUSE;
    let mut retries = 0;
    loop {
        match attempt() {
            Err(e) if retries < max_retries && is_transient(&e) => {
                retries += 1;
                debug!(%what, retry = retries, error = %e, "vsphere: retrying");
                std::thread::sleep(pause);
                pause = (pause * 4).min(MAX_PAUSE);
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn methods_are_read_from_the_body() {
        assert_eq!(
            method_of("<RetrievePropertiesEx><_this>"),
            "RetrievePropertiesEx"
        );
        assert_eq!(method_of("  <Logout/>"), "Logout");
        assert_eq!(method_of("<Login xmlns=\"urn:vim25\">"), "Login");
        assert!(resend_safe("<SearchDatastore_Task><_this>"));
        assert!(!resend_safe("<MoveDatastoreFile_Task><_this>"));
        assert!(!resend_safe("<DeleteDatastoreFile_Task>"));
    }

    #[test]
    fn transient_errors_are_retried_and_others_are_not() {
        let calls = Cell::new(0);
        let r = retrying(3, "t", || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(Error::backend("vsphere", "reset", true))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.ok(), Some(7));
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let r: Result<()> = retrying(3, "t", || {
            calls.set(calls.get() + 1);
            Err(Error::invalid("bad"))
        });
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);

        calls.set(0);
        let r: Result<()> = retrying(2, "t", || {
            calls.set(calls.get() + 1);
            Err(Error::backend("vsphere", "down", true))
        });
        assert!(r.is_err());
        assert_eq!(calls.get(), 3);
    }
}
