//! The conformance suite every imagestore backend must pass.
//!
//! Each case is a plain `pub async fn(&Ctx) -> anyhow::Result<()>` in [`cases`]; the
//! [`conformance_tests!`] macro expands one `#[tokio::test]` per case for a context
//! constructor, so a backend's test file is three lines:
//!
//! ```text
//! async fn ctx() -> imagestore_conformance::Ctx { /* open the backend by URL */ }
//! imagestore_conformance::conformance_tests!(ctx);
//! ```
//!
//! The store is always opened by URL through the registry. A backend whose server is missing
//! is skipped with a message outside CI and fails under `CI=true` (see [`require_server`]).

#![allow(missing_debug_implementations)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

pub mod cases;
pub mod catalog_files;
pub mod corpus;
pub mod crash;
pub mod differential;
pub mod faults;
pub mod targen;
pub mod tars;
pub mod tree;

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use imagestore::{ImageId, ImageStorer, StoreName};

/// Backend-specific hooks the generic cases need for crash and leftover checks.
#[async_trait]
pub trait Hooks: Send + Sync {
    /// Leaves behind what a write of `id` that crashed before its commit would leave
    /// (staged bytes, an uncommitted image).
    async fn leave_crashed_write(&self, store: &StoreName, id: &ImageId) -> Result<()>;
    /// Leaves a link from `parent` to a child `child` that does not exist, as a writer that
    /// died between linking the child and committing it does.
    async fn leave_dangling_child(
        &self,
        store: &StoreName,
        parent: &ImageId,
        child: &ImageId,
    ) -> Result<()>;
    /// Counts leftovers of crashed writes in `store`.
    async fn leftovers(&self, store: &StoreName) -> Result<usize>;
    /// A digest of everything stored for `store`, byte for byte.
    async fn fingerprint(&self, store: &StoreName) -> Result<String>;
    /// Checks what the backend stores for `image` with tools of its own (the disk backends
    /// run `qemu-img check`); nothing by default.
    async fn check_image(&self, _store: &StoreName, _image: &imagestore::Image) -> Result<()> {
        Ok(())
    }
}

/// What a case gets: the backend opened by URL, and its hooks.
#[derive(Clone)]
pub struct Ctx {
    /// The URL the backend was opened with.
    pub url: String,
    /// The backend.
    pub store: Arc<dyn ImageStorer>,
    /// Backend-specific hooks.
    pub hooks: Arc<dyn Hooks>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("url", &self.url).finish()
    }
}

impl Ctx {
    /// Opens the backend at `url` through the registry.
    pub async fn open(url: String, hooks: Arc<dyn Hooks>) -> Result<Ctx> {
        let store = imagestore::open(&url).await?;
        Ok(Ctx { url, store, hooks })
    }

    /// A second, independent instance of the backend (as after a restart).
    pub async fn reopen(&self) -> Result<Arc<dyn ImageStorer>> {
        Ok(imagestore::open(&self.url).await?)
    }

    /// Creates a store with a fresh unique name.
    pub async fn new_store(&self) -> Result<StoreName> {
        let name = unique("s");
        self.store.create_image_store(&name).await?;
        Ok(name)
    }
}

/// A unique store name or id with a prefix.
pub fn unique(prefix: &str) -> StoreName {
    StoreName::new(format!(
        "{prefix}-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    ))
    .expect("valid name")
}

/// A unique image id with a prefix.
pub fn unique_id(prefix: &str) -> ImageId {
    ImageId::new(format!(
        "{prefix}-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    ))
    .expect("valid id")
}

/// Reads an environment variable naming a test server. Returns `None` (the caller skips) when
/// it is unset outside CI; panics when it is unset under `CI=true`, so a missing server fails
/// the run instead of passing silently.
pub fn require_server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{var} is not set, but CI=true requires the server this suite tests against")
        }
        _ => {
            eprintln!(
                "skipping: {var} is not set (start the server with `cargo xtask conformance`)"
            );
            None
        }
    }
}

/// Expands one `#[tokio::test]` per conformance case, for a context constructor
/// `async fn() -> Option<Ctx>` (`None` skips, see [`require_server`]).
#[macro_export]
macro_rules! conformance_tests {
    ($ctor:path) => {
        $crate::conformance_tests!(@cases $ctor;
            // Stores
            create_store_makes_hidden_scratch,
            create_existing_store_already_exists,
            get_missing_store_not_found,
            list_stores_lists_created,
            delete_empty_store,
            delete_store_with_images_refused,
            delete_missing_store_not_found,
            // Writing and reading images
            write_and_get_image,
            write_needs_existing_parent,
            wrong_sum_is_mismatch_and_invisible,
            broken_pull_then_retry,
            same_id_same_sum_returns_existing_unread,
            same_id_other_sum_conflicts,
            same_id_other_parent_conflicts,
            empty_layer_is_valid,
            compressed_layers_verify_raw_bytes,
            scratch_id_is_reserved,
            invalid_metadata_changes_nothing,
            metadata_round_trips,
            list_images_excludes_scratch,
            list_images_by_ids,
            get_missing_image_not_found,
            // Deleting, in use, owners
            delete_leaf_image,
            delete_image_with_children_in_use,
            delete_scratch_refused,
            delete_missing_image_not_found,
            owners_block_delete,
            owners_listed_by_url,
            release_unknown_owner_not_found,
            // Usage and limits
            usage_counts_exact_bytes,
            layer_usage_per_image,
            chain_of_128_layers,
            chain_depth_limit_enforced,
            // Concurrency and restarts
            parallel_layers_on_one_parent,
            concurrent_same_id_single_write,
            delete_parent_racing_child_write,
            reopen_sees_every_image,
            leftover_is_swept,
            dangling_child_link_keeps_nothing_in_use,
            dropped_write_leaves_nothing,
            dropped_import_leaves_nothing,
            // Contents: export and diff
            export_merges_layers,
            whiteouts_delete_lower_entries,
            opaque_dirs_hide_lower_entries,
            markers_apply_to_lower_layers_only,
            dir_replaced_by_file,
            export_headers_only,
            diff_against_parent,
            diff_against_several_ancestors,
            diff_emits_whiteouts,
            diff_emits_opaque_markers,
            export_of_non_ancestor_invalid,
            export_filter_include_exclude,
            export_filter_rebase_strip,
            export_filter_applies_to_whiteouts,
            raw_export_digest_equals_sum,
            raw_export_keeps_compressed_bytes,
            hardlinks_exported_as_links,
            hardlink_keeps_content_after_target_replaced,
            special_entries_kept,
            xattrs_and_long_names_kept,
            sparse_file_contents,
            // Limits of what a file system holds
            duplicate_paths_last_entry_wins,
            longest_names_read_back,
            mtimes_across_ext4_range_read_back,
            hardlink_kept_when_target_whited_out,
            // Writable layers
            writable_import_export_commit,
            writable_layer_puts_parent_in_use,
            import_applies_whiteouts_and_filters,
            committed_images_never_change,
            import_refuses_hostile_tar,
            // Checkout
            checkout_tree,
            checkout_keeps_hardlinks,
            checkout_stays_inside,
            checkout_writable_layer,
            // Hostile archives
            hostile_archives_rejected_unchanged,
            archive_without_end_marker_accepted,
        );
    };
    (@cases $ctor:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() -> ::anyhow::Result<()> {
                let Some(ctx) = $ctor().await else { return Ok(()) };
                $crate::cases::$case(&ctx).await
            }
        )*
    };
}

/// The generated Debian image fixture (`cargo xtask fixture debian`): its directory, from
/// `IMAGESTORE_FIXTURE_DEBIAN` or the default `target/xtask/fixtures/debian`. `None` (skip)
/// when it is missing outside CI; a panic when it is missing under `CI=true`.
pub fn debian_fixture() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("IMAGESTORE_FIXTURE_DEBIAN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/xtask/fixtures/debian")
        });
    if dir.join("oci.done").exists() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "the Debian fixture is missing at {} (run `cargo xtask fixture debian`), and CI=true requires it",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no Debian fixture at {} (run `cargo xtask fixture debian`)",
        dir.display()
    );
    None
}

/// Fails under `CI=true` if a program is missing; otherwise says whether it is there.
pub fn require_tool(program: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{program} is not installed, and CI=true requires it");
        }
        eprintln!("skipping: {program} is not installed");
    }
    found
}
