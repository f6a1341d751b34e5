//! `imagestore`: the command-line tool for image stores on any backend URL.
//!
//! Exit codes: 0 success, 1 an operation failed (one line on stderr says what and where),
//! 2 the command line was wrong.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod build_info;
mod content;
mod docs;
mod images;
mod oci;
mod output;
mod progress;
mod refs;
mod serve;
mod stores;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::FromArgMatches;
use imagestore::ImageStorer;

use crate::args::{Cli, Command};

/// The URL used when neither `--url` nor `IMAGESTORE_URL` is given: a directory in the user's
/// data directory (`$XDG_DATA_HOME/imagestore`, else `~/.local/share/imagestore`).
pub fn default_url() -> Result<String> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .context("neither XDG_DATA_HOME nor HOME is set; pass --url")?;
            std::path::PathBuf::from(home).join(".local/share")
        }
    };
    Ok(format!("file://{}", base.join("imagestore").display()))
}

/// Refuses a relative `file:` URL (`file:relative`, `file:./x`), which URL parsing would turn
/// into a directory at the root of the file system, and says what to write instead.
fn check_file_url(url: &str) -> Result<()> {
    let Some(rest) = url.strip_prefix("file:") else {
        return Ok(());
    };
    if rest.starts_with("//") {
        return Ok(());
    }
    let abs = std::env::current_dir()
        .map(|d| d.join(rest))
        .unwrap_or_else(|_| std::path::PathBuf::from(rest));
    anyhow::bail!(
        "{url:?} is not an absolute file URL; write file:///absolute/path (here: file://{})",
        abs.display()
    )
}

async fn open(cli: &Cli) -> Result<Arc<dyn ImageStorer>> {
    let url = match &cli.url {
        Some(u) => u.clone(),
        None => default_url()?,
    };
    check_file_url(&url)?;
    Ok(imagestore::open(&url).await?)
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man { dir } => return docs::man(dir.as_deref()),
        _ => {}
    }
    let store = open(&cli).await?;
    if let Command::Serve(a) = &cli.command {
        let url = match &cli.url {
            Some(u) => u.clone(),
            None => default_url()?,
        };
        return serve::run(store, &url, a).await;
    }
    let json = cli.json;
    let progress = progress::reporter(cli.progress, json);
    match cli.command {
        Command::Store(cmd) => stores::run(store.as_ref(), cmd, json).await,
        Command::Image(cmd) => images::run(store.as_ref(), cmd, json).await,
        Command::Export(a) => content::export(store.as_ref(), a).await,
        Command::Checkout(a) => content::checkout(store.as_ref(), a, json).await,
        Command::Writable(cmd) => content::writable(store.as_ref(), cmd, json).await,
        Command::Import(a) => content::import(store.as_ref(), a, json).await,
        Command::Owner(cmd) => content::owner(store.as_ref(), cmd, json).await,
        Command::Ref(cmd) => refs::run(store.as_ref(), cmd, json).await,
        Command::Gc(a) => refs::gc(store.as_ref(), a, json).await,
        Command::Oci(cmd) => oci::run(store.as_ref(), cmd, json, progress).await,
        Command::Sample { store: s, path } => {
            oci::sample(store.as_ref(), s, path, json, progress).await
        }
        Command::Completions { .. } | Command::Man { .. } | Command::Serve(_) => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = match args::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMAGESTORE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::error_line(&anyhow::anyhow!("starting the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::error_line(&e);
            ExitCode::from(1)
        }
    }
}
