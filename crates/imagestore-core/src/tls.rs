//! The TLS cryptography every HTTPS client of imagestore uses (feature `tls`).
//!
//! The clients (reqwest's, also inside `object_store`) are built with rustls and no provider of
//! their own, so the process needs one installed before the first client is made. imagestore
//! uses ring, which the workspace builds anyway, instead of rustls' default aws-lc-rs, whose C
//! library is the single most expensive dependency to compile (decision 0022).

/// Makes ring rustls' process-wide cryptography provider, unless the process installed one
/// already (then that one is used). Idempotent and cheap: every crate that builds an HTTPS
/// client calls it first, so library users never have to.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one between the check and here; either provider serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn installs_ring_once() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        let provider = rustls::crypto::CryptoProvider::get_default();
        assert!(provider.is_some(), "a provider is installed");
    }
}
