//! `imagestore completions SHELL` and `imagestore man`: generated from the clap definitions.

use std::io::Write;
use std::path::Path;

use crate::args::command;
use anyhow::{Context, Result};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "imagestore", &mut out);
    out.flush().context("writing standard output")
}

/// Prints the top-level man page, or writes every command's page into `dir`.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let cmd = command();
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            clap_mangen::generate_to(cmd, d)
                .with_context(|| format!("writing man pages into {}", d.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("writing standard output")?;
            out.flush().context("writing standard output")?;
        }
    }
    Ok(())
}
