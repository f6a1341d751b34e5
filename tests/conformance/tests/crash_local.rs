//! The crash test (`imagestore_conformance::crash`) against the `file://` backend: 60
//! SIGKILLs of a writer at random moments.

mod local_hooks;

use std::sync::Arc;

use local_hooks::LocalHooks;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let url = format!("file://{}", root.display());
    imagestore_conformance::crash::run(url, Arc::new(LocalHooks { root }), 60)
}
