//! Checkout: materialising an image into a directory without ever writing outside it.

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
