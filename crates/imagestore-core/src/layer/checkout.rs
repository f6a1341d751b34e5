//! Checkout: materialising a merged view into a directory without ever writing outside it.
//!
//! Every path is resolved by the kernel inside the destination (`openat2` with
//! `RESOLVE_IN_ROOT`), the final component is created relative to its parent's descriptor, and
//! owners, modes, times and xattrs are set on descriptors of the created object or with
//! no-follow calls, never through a symlink. Directories get their final mode and times last,
//! deepest first, so read-only directories can still be filled.
//!
//! As root, owners, device nodes and all but overlay/`trusted.*` xattrs are restored. In
//! rootless mode (any user) ownership and privileged xattrs are skipped, and device nodes become
//! empty regular files with the node's mode (as `umoci unpack --rootless` does); all of it is
//! listed in the report.

use serde::{Deserialize, Serialize};

/// How a checkout treats what needs privilege.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutOptions {
    /// Skip what needs root (owners, device nodes, `trusted.*`/`security.*` xattrs) and report
    /// it instead of failing.
    pub rootless: bool,
}

/// What a checkout did and what it had to skip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutReport {
    /// Entries created.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// What was skipped and why (rootless mode).
    pub skipped: Vec<String>,
}

/// True for xattrs a checkout never restores: overlayfs' own (`trusted.overlay.*`,
/// `user.overlay.*`) and every `trusted.*` one.
pub fn is_filtered_xattr(name: &str) -> bool {
    name.starts_with("trusted.") || name.starts_with("user.overlay.")
}

#[cfg(target_os = "linux")]
#[path = "checkout_linux.rs"]
mod linux;

#[cfg(target_os = "linux")]
pub use linux::checkout;

/// Materialises a whole-image plan into `dest`: on this platform, `Unsupported`. Staying
/// inside the destination relies on Linux's `openat2(RESOLVE_IN_ROOT)`, and a checkout that
/// could be led outside it is not offered.
#[cfg(not(target_os = "linux"))]
pub fn checkout(
    _plan: &crate::layer::export::Plan,
    _source: &dyn crate::layer::content::ContentSource,
    _dest: &std::path::Path,
    _options: &CheckoutOptions,
) -> crate::error::Result<CheckoutReport> {
    Err(crate::error::Error::Unsupported {
        operation: "checkout (it needs Linux's openat2 to stay inside its destination)",
        backend: "checkout",
    })
}
