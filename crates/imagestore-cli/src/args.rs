//! The command line, as clap definitions.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};
use imagestore::StoreName;

/// The clap command with the version texts of this build (the commit and backends of
/// [`crate::build_info`]): what the parser, the man pages and the completions are made from.
pub fn command() -> clap::Command {
    Cli::command()
        .version(crate::build_info::short_version())
        .long_version(crate::build_info::long_version())
}

/// Store container image layers as verified chains, on local disk, S3 or vSphere.
#[derive(Debug, Parser)]
#[command(name = "imagestore", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Backend URL (file:///path, s3://bucket/prefix, vmdk:///path, vsphere://host/dc/ds/folder,
    /// imagestore+http://host:port for a store served by `imagestore serve`).
    /// Defaults to $IMAGESTORE_URL, else a store in the user's data directory.
    #[arg(long, global = true, env = "IMAGESTORE_URL")]
    pub url: Option<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Progress of long work on stderr: bars on a terminal (auto), JSON lines, or none.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The store a command acts on: the one declaration of `--store`, flattened into every
/// verb that works inside a store, so they all name it the same way.
#[derive(Debug, Clone, Args)]
pub struct StoreArg {
    /// Store name.
    #[arg(long)]
    pub store: String,
}

impl StoreArg {
    /// The store name, validated.
    pub fn name(&self) -> imagestore::Result<StoreName> {
        StoreName::new(&self.store)
    }
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
    /// Name images: list, show, set (compare-and-swap) and remove references.
    #[command(subcommand)]
    Ref(RefCmd),
    /// Delete the images and blobs nothing keeps: no reference, owner, writable layer or write
    /// in progress, not in --keep, older than --grace (and their unused parents).
    Gc(GcArgs),
    /// Import, pull, push and export OCI images (layouts, oci-archives, docker-archives,
    /// registries).
    #[command(subcommand)]
    Oci(OciCmd),
    /// Import the committed sample image (a few MiB of Debian packages in three layers) and
    /// show its chain and the store's usage: a first look at a store at work.
    Sample {
        /// Store name.
        #[arg(long, default_value = "sample")]
        store: String,
        /// The sample's OCI layout (default: `share/imagestore/samples/debian-mini` beside an
        /// installed binary, else `samples/debian-mini` of the source tree).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
    },
    /// Serve the store over HTTP: the native /v1 API, VIC's port-layer storage API,
    /// /healthz, /readyz and /metrics. Prints the bound address when ready; stops on SIGTERM
    /// or ctrl-c after draining requests in flight.
    Serve(ServeArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one page per command into a directory.
    Man {
        /// Write `imagestore.1`, `imagestore-oci-import.1`, ... into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal and --json is not given; nothing otherwise.
    Auto,
    /// Bars, even when stderr is not a terminal.
    Bars,
    /// One JSON object per event on stderr.
    Json,
    /// Nothing.
    None,
}

/// `oci` subcommands.
#[derive(Debug, Subcommand)]
pub enum OciCmd {
    /// Import an image from an OCI layout directory, an oci-archive or a docker-archive.
    ///
    /// Layers are written base first, each as the image named by its OCI chain id; what is
    /// already stored is skipped. The store is created if it does not exist. The manifest and
    /// config are kept byte for byte, and a reference is set (moved if it exists) for each
    /// name of the image: the layout's ref name (or --tag), or each of the archive's repo
    /// tags.
    Import {
        #[command(flatten)]
        store: StoreArg,
        /// The layout directory or archive file.
        path: PathBuf,
        /// Which image, when the source holds several (a layout's ref name or a repo tag).
        #[arg(long)]
        tag: Option<String>,
        /// Platform to pick from a multi-platform index (OS/ARCH[/VARIANT]).
        #[arg(long)]
        platform: Option<String>,
    },
    /// Pull an image from an OCI distribution registry.
    ///
    /// The manifest and config are kept byte for byte and the reference, as normalised
    /// (`docker.io/library/debian:latest`), is set to the image (moved if it exists).
    /// The password is read from standard input with --password-stdin, or from
    /// IMAGESTORE_REGISTRY_PASSWORD; it is never printed.
    Pull {
        #[command(flatten)]
        store: StoreArg,
        /// Image reference: [REGISTRY[:PORT]/]REPOSITORY[:TAG][@DIGEST].
        reference: String,
        /// Speak plain HTTP to the registry (for a local registry without TLS).
        #[arg(long)]
        insecure: bool,
        /// User name for the registry.
        #[arg(long, env = "IMAGESTORE_REGISTRY_USERNAME")]
        username: Option<String>,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        /// Platform to pick from a multi-platform image (OS/ARCH[/VARIANT]).
        #[arg(long)]
        platform: Option<String>,
        /// Most layer downloads at once.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
        concurrency: u16,
        /// Directory for downloads in progress (default: the system temp directory).
        #[arg(long, value_name = "DIR")]
        tmp_dir: Option<PathBuf>,
    },
    /// Push a reference of the store to an OCI distribution registry.
    ///
    /// Layers, config and manifest are sent byte for byte, so the pushed manifest has the
    /// digest the image was imported or pulled with. Blobs the repository holds are skipped,
    /// blobs of a reference pulled from the same registry are mounted, others are uploaded
    /// (in chunks above --chunk-threshold). Needs a backend that keeps layer bytes (file://,
    /// s3://). Credentials as for pull.
    Push {
        #[command(flatten)]
        store: StoreArg,
        /// The reference of the store (as `oci refs` lists it, or a unique /-suffix of it).
        reference: String,
        /// Destination: [REGISTRY[:PORT]/]REPOSITORY[:TAG][@DIGEST].
        destination: String,
        /// Speak plain HTTP to the registry (for a local registry without TLS).
        #[arg(long)]
        insecure: bool,
        /// User name for the registry.
        #[arg(long, env = "IMAGESTORE_REGISTRY_USERNAME")]
        username: Option<String>,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        /// Upload blobs larger than this many bytes in chunks.
        #[arg(long, value_name = "BYTES", default_value_t = imagestore_oci::registry::push::DEFAULT_CHUNK_THRESHOLD)]
        chunk_threshold: u64,
        /// Bytes per chunk of a chunked upload.
        #[arg(long, value_name = "BYTES", default_value_t = imagestore_oci::registry::push::DEFAULT_CHUNK_SIZE, value_parser = clap::value_parser!(u64).range(1..))]
        chunk_size: u64,
    },
    /// Export an image's chain as an OCI layout directory, or an oci-archive with --archive.
    ///
    /// Given a reference whose manifest and config the store keeps, on a backend that keeps
    /// layer bytes (file://, s3://), the layout holds the original manifest, config and layers
    /// byte for byte (the same digests). Elsewhere layers are regenerated and so are the
    /// manifest and, when the diff ids changed, the config.
    #[command(group(clap::ArgGroup::new("dest-or-archive").required(true).args(["dest", "archive"])))]
    Export {
        #[command(flatten)]
        store: StoreArg,
        /// A reference of the store (or a unique /-suffix of one), an image id, or a unique
        /// prefix of an image id.
        id: String,
        /// Layout directory (created; an existing layout gets the image added).
        dest: Option<PathBuf>,
        /// Write an oci-archive file instead of a directory.
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
        /// Tag in the layout's index (default: the reference's tag, else latest).
        #[arg(long)]
        tag: Option<String>,
    },
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Create a store (with its scratch root image).
    Create {
        /// Store name.
        name: String,
        /// Most bytes the store's images may use (writes past it fail); suffixes K, M, G, T
        /// (powers of 1024) are accepted.
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
        quota: Option<u64>,
    },
    /// Show, set or remove a store's quota.
    Quota {
        /// Store name.
        name: String,
        /// The new quota in bytes (K, M, G, T suffixes accepted), or `none` to remove it;
        /// without it, the quota is shown.
        #[arg(value_name = "BYTES|none")]
        bytes: Option<String>,
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
        #[command(flatten)]
        store: StoreArg,
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
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show one image.
    Info {
        #[command(flatten)]
        store: StoreArg,
        /// Image id.
        id: String,
    },
    /// Delete an image (refused while it has children or owners), or with --branch its chain
    /// up to the first parent still in use.
    Rm {
        #[command(flatten)]
        store: StoreArg,
        /// Image id.
        id: String,
        /// Also delete each parent that nothing else uses, walking up the chain (VIC's
        /// DeleteBranch), until one in use, one named by --keep, or scratch.
        #[arg(long)]
        branch: bool,
        /// With --branch: an image the walk must stop at (repeatable).
        #[arg(long, requires = "branch")]
        keep: Vec<String>,
    },
}

/// `ref` subcommands.
#[derive(Debug, Subcommand)]
pub enum RefCmd {
    /// List the store's references.
    Ls {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show one reference.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Reference name (an OCI reference such as registry/repo:tag, or any name of that
        /// grammar).
        name: String,
    },
    /// Point a reference at an image (created, or moved from where it pointed).
    Set {
        #[command(flatten)]
        store: StoreArg,
        /// Reference name.
        name: String,
        /// Image id.
        id: String,
        /// Only if the reference now names this image (compare-and-swap); `none`: only if
        /// it does not exist.
        #[arg(long, value_name = "ID|none")]
        expect: Option<String>,
    },
    /// Remove a reference (the image stays, no longer kept by it).
    Rm {
        #[command(flatten)]
        store: StoreArg,
        /// Reference name.
        name: String,
        /// Only if the reference now names this image.
        #[arg(long, value_name = "ID")]
        expect: Option<String>,
    },
}

/// `gc` arguments.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// List what would be deleted and the bytes it would free; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Images committed and blobs put more recently than this stay (`1h`, `10m`, `0s`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// An image that stays, with its parents (repeatable).
    #[arg(long)]
    pub keep: Vec<String>,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (`host:port`; port 0 picks a free one). An address other hosts
    /// can reach needs --tls-cert/--tls-key and --token-file or --client-ca, or --insecure.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// TLS certificate chain (PEM), leaf first.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on every route but /healthz, with the token
    /// read from this file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Require client certificates signed by a CA of this PEM file (needs TLS).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Allow a listener other hosts can reach without TLS and authentication.
    #[arg(long)]
    pub insecure: bool,
    /// How long requests in flight may take to finish after SIGTERM or ctrl-c (`30s`, `1m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
}

/// Parses a whole byte count with an optional binary suffix: `512`, `10K`, `2G`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: unknown suffix {c:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count such as 1048576 or 10G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `export` arguments.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Image or writable layer id.
    pub id: String,
    /// Only the changes since this ancestor.
    #[arg(long)]
    pub ancestor: Option<String>,
    /// Keep only paths under this prefix (repeatable); a longer --exclude inside it still drops.
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
    /// The whole image as one stream-optimized VMDK disk holding its ext4 (the form vSphere
    /// imports); backends that keep images as disks (vmdk://, vsphere://).
    #[arg(long, conflicts_with_all = ["ancestor", "include", "exclude", "rebase", "strip", "headers_only", "raw"])]
    pub vmdk: bool,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `checkout` arguments.
#[derive(Debug, Args)]
pub struct CheckoutArgs {
    #[command(flatten)]
    pub store: StoreArg,
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
        #[command(flatten)]
        store: StoreArg,
        /// The image it builds on.
        #[arg(long)]
        parent: String,
        /// Its id.
        #[arg(long)]
        id: String,
    },
    /// Turn a writable layer into an immutable image.
    Commit {
        #[command(flatten)]
        store: StoreArg,
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
        #[command(flatten)]
        store: StoreArg,
        /// The writable layer.
        writable: String,
    },
}

/// `import` arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The writable layer.
    pub writable: String,
    /// Tar file, or - for standard input.
    pub file: String,
    /// Keep only paths under this prefix (repeatable); a longer --exclude inside it still drops.
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
    /// Register a user of an image (with --ttl, for that long only).
    Acquire {
        #[command(flatten)]
        store: StoreArg,
        /// Image id.
        id: String,
        /// Owner name.
        owner: String,
        /// Protect the image for this long only (`90s`, `10m`, `2h`); renew with `owner renew`.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Extend an owner's lease on an image to TTL from now.
    Renew {
        #[command(flatten)]
        store: StoreArg,
        /// Image id.
        id: String,
        /// Owner name.
        owner: String,
        /// The new lease, from now (`90s`, `10m`, `2h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Remove a user of an image.
    Release {
        #[command(flatten)]
        store: StoreArg,
        /// Image id.
        id: String,
        /// Owner name.
        owner: String,
    },
    /// List the users of an image.
    Ls {
        #[command(flatten)]
        store: StoreArg,
        /// Image id.
        id: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Commands that take no `--store`: those whose subject is a store (given by name) or no
    /// store at all.
    const WITHOUT_STORE: [&str; 8] = [
        "store create",
        "store ls",
        "store rm",
        "store usage",
        "store quota",
        "completions",
        "man",
        // Serves every store of its URL.
        "serve",
    ];

    /// Every runnable command (a command without subcommands), as its space-separated path.
    fn leaves(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            let path = format!("{prefix}{}", sub.get_name());
            if sub.has_subcommands() {
                leaves(sub, &format!("{path} "), out);
            } else {
                out.push((path, sub.clone()));
            }
        }
    }

    #[test]
    fn every_command_in_a_store_names_it_with_the_store_option() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut all = Vec::new();
        leaves(&cli, "", &mut all);
        let mut without = Vec::new();
        for (path, cmd) in &all {
            let store = cmd.get_arguments().find(|a| a.get_id() == "store");
            match store {
                Some(a) => {
                    assert!(!a.is_positional(), "{path}: the store is positional");
                    assert_eq!(a.get_long(), Some("store"), "{path}");
                }
                None => without.push(path.as_str()),
            }
            // A store given under another name must be the subject of a `store` command.
            for a in cmd.get_arguments().filter(|a| a.is_positional()) {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                if help.to_lowercase().contains("store name") {
                    assert!(
                        path.starts_with("store "),
                        "{path}: positional {} is a store name; use --store",
                        a.get_id()
                    );
                }
            }
        }
        without.sort_unstable();
        let mut expected = WITHOUT_STORE.to_vec();
        expected.sort_unstable();
        assert_eq!(
            without, expected,
            "a command without --store must act on no store, or on the store it names"
        );
        // The oci commands are among those that take it.
        for oci in ["oci import", "oci pull", "oci push", "oci export"] {
            assert!(all.iter().any(|(p, _)| p == oci), "{oci} missing");
            assert!(!without.contains(&oci), "{oci}");
        }
    }
}
