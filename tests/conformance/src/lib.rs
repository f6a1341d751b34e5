//! The conformance suite every imagestore backend must pass.
//!
//! Each case is a plain `pub async fn(&Ctx) -> anyhow::Result<()>` in [`cases`]; [`trials`]
//! makes one libtest-mimic trial per case for a backend, so a backend's test file (built with
//! `harness = false`) is a few lines:
//!
//! ```text
//! async fn ctx(url: String) -> anyhow::Result<Ctx> { /* open the backend by URL */ }
//! fn main() -> ExitCode {
//!     let url = support::env("IMAGESTORE_TEST_X", "start it with `cargo xtask conformance x`");
//!     support::run(imagestore_conformance::trials("", url, ctx))
//! }
//! ```
//!
//! The store is always opened by URL through the registry. A backend whose server is missing
//! fails under `CI=true` and is reported as ignored outside CI (see [`support`]).

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

pub use imagestore_test_support as support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use imagestore::{ImageId, ImageStorer, StoreName};
use support::{Need, Trial};

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
    /// The local file holding `store`'s usage counter, on backends that keep one in a file
    /// (the catalogue's `usage`); the default says the backend has none.
    async fn usage_file(&self, _store: &StoreName) -> Result<std::path::PathBuf> {
        anyhow::bail!("this backend keeps no usage counter file")
    }
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

/// A conformance case, boxed so that the suite can be listed.
pub type CaseFn = fn(Ctx) -> Pin<Box<dyn Future<Output = Result<()>>>>;

/// Lists every conformance case by name, as `(name, case)` pairs.
macro_rules! conformance_tests {
    () => {
        conformance_tests!(@cases
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
            owner_lease_expires,
            owner_lease_renewed_keeps_protecting,
            delete_branch_follows_vic,
            delete_branch_stops_at_users_and_keeps,
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
            diff_headers_mark_changes,
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
            // References
            reference_set_get_list_delete,
            two_tags_pin_one_image,
            moving_a_tag_unpins_the_old_image,
            expect_absent_on_existing_conflicts,
            stale_expectation_conflicts,
            delete_reference_stale_expectation_conflicts,
            reference_to_missing_image_not_found,
            reference_to_missing_blob_not_found,
            referenced_image_delete_in_use,
            delete_branch_stops_at_referenced_parent,
            store_delete_refused_while_references_exist,
            reference_cas_race_across_instances,
            // Blobs
            blob_round_trip_byte_exact,
            blob_wrong_digest_mismatch,
            blob_oversize_limit_exceeded,
            blobs_listed_with_size,
            referenced_blob_delete_conflicts,
            delete_missing_blob_not_found,
            blob_put_again_is_fine,
            // Garbage collection and leases
            gc_dry_run_matches_real_run,
            gc_deletes_unreferenced_leaf_first,
            gc_keeps_roots_and_ancestors,
            gc_default_grace_keeps_young,
            gc_collects_unreferenced_blobs,
            gc_ignores_expired_lease,
            lease_on_missing_image_not_found,
            gc_spares_parent_of_write_in_flight,
            gc_racing_reference_moves,
            delete_images_keeps_users_whatever_the_ids,
            gc_concurrent_runs_consistent,
            // Quotas
            quota_round_trip,
            quota_exact_fit_and_one_byte_over,
            quota_below_usage_refuses_writes,
            quota_removed_allows_writes,
            quota_refuses_commit_keeps_writable,
        )
    };
    (@cases $($case:ident),* $(,)?) => {
        vec![$(
            (
                stringify!($case),
                (|ctx: Ctx| Box::pin(async move { cases::$case(&ctx).await })) as CaseFn,
            )
        ),*]
    };
}

/// Every conformance case, by name, in the suite's order.
pub fn all_cases() -> Vec<(&'static str, CaseFn)> {
    conformance_tests!()
}

/// Threads of the tokio runtime each case runs on.
const CASE_WORKERS: usize = 4;

/// One trial named `name` that opens the backend with `open(value)` (the value `need` found)
/// on a tokio runtime of its own and runs `case` on it. When `need` is missing the trial fails
/// under CI and is ignored outside it (see [`support::decide`]).
pub fn case_trial<T, O, OF, C, CF>(name: String, need: Need<T>, open: O, case: C) -> Trial
where
    T: Send + 'static,
    O: FnOnce(T) -> OF + Send + 'static,
    OF: Future<Output = Result<Ctx>>,
    C: FnOnce(Ctx) -> CF + Send + 'static,
    CF: Future<Output = Result<()>>,
{
    support::trial_async(name, need, CASE_WORKERS, move |v| async move {
        case(open(v).await?).await
    })
}

/// The cases only the catalogue backends (`file://`, `vmdk://`, `vsphere://`) run, because they
/// reach into the catalogue's files through the hooks: named and opened as [`trials`] does.
pub fn catalogue_trials<T, O, OF>(prefix: &str, need: Need<T>, open: O) -> Vec<Trial>
where
    T: Clone + Send + 'static,
    O: Fn(T) -> OF + Clone + Send + 'static,
    OF: Future<Output = Result<Ctx>>,
{
    vec![
        case_trial(
            format!("{prefix}failure_after_commit_is_not_returned"),
            need.clone(),
            open.clone(),
            |ctx| async move { cases::failure_after_commit_is_not_returned(&ctx).await },
        ),
        case_trial(
            format!("{prefix}sweep_spares_what_a_live_writer_holds"),
            need,
            open,
            |ctx| async move { cases::sweep_spares_what_a_live_writer_holds(&ctx).await },
        ),
    ]
}

/// The whole suite for one backend: one trial per case, named `prefix` followed by the case's
/// name (`prefix` is empty, or a module-like `moto::`), each opening the backend with
/// `open(value)` and running the case (see [`case_trial`]).
pub fn trials<T, O, OF>(prefix: &str, need: Need<T>, open: O) -> Vec<Trial>
where
    T: Clone + Send + 'static,
    O: Fn(T) -> OF + Clone + Send + 'static,
    OF: Future<Output = Result<Ctx>>,
{
    all_cases()
        .into_iter()
        .map(|(name, case)| case_trial(format!("{prefix}{name}"), need.clone(), open.clone(), case))
        .collect()
}
