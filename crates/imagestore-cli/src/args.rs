//! The command line, as clap definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Store container image layers as verified chains, on local disk, S3 or vSphere.
#[derive(Debug, Parser)]
#[command(name = "imagestore", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Backend URL (file:///path, s3://bucket/prefix, vmdk:///path, vsphere://host/dc/ds/folder).
    /// Defaults to $IMAGESTORE_URL, else a store in the user's data directory.
    #[arg(long, global = true, env = "IMAGESTORE_URL")]
    pub url: Option<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, delete image stores and show their usage.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Write, list, inspect and delete images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Write an image (or writable layer) as a tar: whole, or its changes since an ancestor.
    Export(ExportArgs),
    /// Materialise an image (or writable layer) into a directory.
    Checkout(CheckoutArgs),
    /// Create and commit writable layers.
    #[command(subcommand)]
    Writable(WritableCmd),
    /// Apply a tar to a writable layer.
    Import(ImportArgs),
    /// Register and release users of an image.
    #[command(subcommand)]
    Owner(OwnerCmd),
    /// Write a small built-in sample chain into a store and show it.
    Sample(SampleArgs),
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Create a store (with its scratch root image).
    Create {
        /// Store name.
        name: String,
    },
    /// List stores.
    Ls,
    /// Delete an empty store.
    Rm {
        /// Store name.
        name: String,
    },
    /// Bytes used by a store's images.
    Usage {
        /// Store name.
        name: String,
    },
}

/// `image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Write an image: a parent plus one layer tar (plain, gzip or zstd) verified against a sum.
    Write {
        /// Store name.
        #[arg(long)]
        store: String,
        /// Parent image id (`scratch` for a base layer).
        #[arg(long)]
        parent: String,
        /// New image id.
        #[arg(long)]
        id: String,
        /// Expected digest of the layer bytes (sha256:<hex>).
        #[arg(long)]
        sum: String,
        /// Metadata entries, KEY=VALUE.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Layer file, or - for standard input.
        file: String,
    },
    /// List images.
    Ls {
        /// Store name.
        #[arg(long)]
        store: String,
    },
    /// Show one image.
    Info {
        /// Store name.
        #[arg(long)]
        store: String,
        /// Image id.
        id: String,
    },
    /// Delete an image (refused while it has children or owners).
    Rm {
        /// Store name.
        #[arg(long)]
        store: String,
        /// Image id.
        id: String,
    },
}

/// `export` arguments.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Store name.
    #[arg(long)]
    pub store: String,
    /// Image or writable layer id.
    pub id: String,
    /// Only the changes since this ancestor.
    #[arg(long)]
    pub ancestor: Option<String>,
    /// Keep paths under this prefix (repeatable).
    #[arg(long = "include", value_name = "PATH")]
    pub include: Vec<String>,
    /// Drop paths under this prefix (repeatable).
    #[arg(long = "exclude", value_name = "PATH")]
    pub exclude: Vec<String>,
    /// Place every path under this prefix.
    #[arg(long)]
    pub rebase: Option<String>,
    /// Remove this prefix from every path.
    #[arg(long)]
    pub strip: Option<String>,
    /// Headers only, no file contents.
    #[arg(long)]
    pub headers_only: bool,
    /// The layer's original bytes, exactly as written.
    #[arg(long, conflicts_with_all = ["ancestor", "include", "exclude", "rebase", "strip", "headers_only"])]
    pub raw: bool,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `checkout` arguments.
#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// Store name.
    #[arg(long)]
    pub store: String,
    /// Image or writable layer id.
    pub id: String,
    /// Destination directory (absent or empty).
    pub dir: PathBuf,
    /// Skip what needs root (owners, device nodes, privileged xattrs) and report it.
    #[arg(long)]
    pub rootless: bool,
}

/// `writable` subcommands.
#[derive(Debug, Subcommand)]
pub enum WritableCmd {
    /// Create a writable layer on an image.
    Create {
        /// Store name.
        #[arg(long)]
        store: String,
        /// The image it builds on.
        #[arg(long)]
        parent: String,
        /// Its id.
        #[arg(long)]
        id: String,
    },
    /// Turn a writable layer into an immutable image.
    Commit {
        /// Store name.
        #[arg(long)]
        store: String,
        /// The writable layer.
        writable: String,
        /// The new image's id.
        #[arg(long)]
        id: String,
        /// Metadata entries, KEY=VALUE.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// Discard a writable layer.
    Rm {
        /// Store name.
        #[arg(long)]
        store: String,
        /// The writable layer.
        writable: String,
    },
}

/// `import` arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Store name.
    #[arg(long)]
    pub store: String,
    /// The writable layer.
    pub writable: String,
    /// Tar file, or - for standard input.
    pub file: String,
    /// Keep paths under this prefix (repeatable).
    #[arg(long = "include", value_name = "PATH")]
    pub include: Vec<String>,
    /// Drop paths under this prefix (repeatable).
    #[arg(long = "exclude", value_name = "PATH")]
    pub exclude: Vec<String>,
    /// Place every path under this prefix.
    #[arg(long)]
    pub rebase: Option<String>,
    /// Remove this prefix from every path.
    #[arg(long)]
    pub strip: Option<String>,
}

/// `owner` subcommands.
#[derive(Debug, Subcommand)]
pub enum OwnerCmd {
    /// Register a user of an image.
    Acquire {
        /// Store name.
        #[arg(long)]
        store: String,
        /// Image id.
        id: String,
        /// Owner name.
        owner: String,
    },
    /// Remove a user of an image.
    Release {
        /// Store name.
        #[arg(long)]
        store: String,
        /// Image id.
        id: String,
        /// Owner name.
        owner: String,
    },
    /// List the users of an image.
    Ls {
        /// Store name.
        #[arg(long)]
        store: String,
        /// Image id.
        id: String,
    },
}

/// `sample` arguments.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Store to write into (created if missing).
    #[arg(long, default_value = "sample")]
    pub store: String,
}
