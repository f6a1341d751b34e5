//! Lines of a `debugfs -f` command file, built only from typed arguments
//! (`docs/security.md`, "The ext4 script").
//!
//! debugfs reads its command file with `fgets` into a buffer of 8,192 bytes, cuts each line
//! at its first `\r`, skips lines starting with `#`, runs lines starting with `!` through the
//! shell, and splits the rest into words with `ss_parse`: blanks separate words, `"` starts
//! and ends a quoted run and `""` inside one is a literal quote. Some commands then read
//! their words with `getopt`, which in GNU's version takes any word starting with `-` as an
//! option, wherever it stands.
//!
//! So a value that reaches a line unchecked can end its line early (a line break, or a line
//! longer than the buffer, whose rest is read as a new command), hide the rest of a line (a
//! NUL or `\r`), or become an option (`ea_set -f /etc/shadow` reads a host file). Here every
//! value is one [`Arg`] of a known kind, checked for what its kind may hold and quoted, and
//! every line is checked whole; anything else is refused with
//! [`Error::InvalidArgument`] before debugfs starts.

use std::fmt::Write as _;
use std::path::Path;

use imagestore_core::{Error, Result};

/// The longest line, without its line break, that debugfs reads as one line: its buffer
/// holds 8,192 bytes, of which one is the terminating NUL and one the line break.
pub const MAX_LINE: usize = 8_190;

/// The namespaces an extended attribute name must start with.
const XATTR_NAMESPACES: [&str; 4] = ["user.", "trusted.", "security.", "system."];

/// One word of a command line.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// A path in the image, relative to its root (`etc/passwd`); written absolute and quoted.
    Image(&'a str),
    /// One name in the current directory (no `/`), quoted.
    Name(&'a str),
    /// A symlink target: any bytes but NUL and line breaks, quoted. Only for commands that do
    /// not read options.
    Target(&'a str),
    /// An extended attribute name: it must start with a namespace, so it never reads as an
    /// option; quoted.
    Xattr(&'a str),
    /// A path on the host that this backend chose (a staged file), quoted.
    Host(&'a Path),
    /// A number.
    Int(i64),
    /// A user or group id: ext4 holds 32 bits.
    Id(u64),
    /// A fixed word of the command (`mode`, `@`-times are [`Arg::Time`]).
    Word(&'static str),
    /// A time in seconds since the epoch, written `@SECONDS`.
    Time(i64),
    /// An octal mode, written `0NNN`.
    Mode(u32),
}

/// A debugfs command file being written.
#[derive(Debug, Default)]
pub struct Script {
    text: String,
    lines: u64,
}

impl Script {
    /// An empty script.
    pub fn new() -> Script {
        Script::default()
    }

    /// Appends the line `command args...`; refuses any argument its kind cannot hold and a
    /// line longer than [`MAX_LINE`].
    pub fn line(&mut self, command: &'static str, args: &[Arg<'_>]) -> Result<()> {
        let mut line = String::from(command);
        for arg in args {
            line.push(' ');
            push_arg(&mut line, *arg)?;
        }
        if line.len() > MAX_LINE {
            let subject = args
                .iter()
                .find_map(|a| match a {
                    Arg::Image(p) => Some(format!("/{p}")),
                    _ => None,
                })
                .unwrap_or_default();
            return Err(refused(
                &subject,
                format!(
                    "its `{command}` command would be {} bytes, more than the {MAX_LINE} \
                     a debugfs line can hold",
                    line.len()
                ),
            ));
        }
        self.text.push_str(&line);
        self.text.push('\n');
        self.lines += 1;
        Ok(())
    }

    /// The lines so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The script's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The script's text as bytes, for writing it out.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

fn refused(subject: &str, why: impl std::fmt::Display) -> Error {
    if subject.is_empty() {
        Error::invalid(format!("vmdk: this layer cannot be written to ext4: {why}"))
    } else {
        Error::invalid(format!(
            "vmdk: {subject:?} cannot be written to ext4: {why}"
        ))
    }
}

/// Refuses a value holding a byte that ends or cuts a debugfs line.
fn check_line_safe(subject: &str, what: &str, value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|c| matches!(c, '\0' | '\n' | '\r')) {
        return Err(refused(
            subject,
            format!("its {what} holds the control character {c:?}"),
        ));
    }
    Ok(())
}

/// Appends `value` quoted for `ss_parse`: inside quotes every byte stands for itself and a
/// quote is doubled.
fn push_quoted(line: &mut String, value: &str) {
    line.push('"');
    for c in value.chars() {
        if c == '"' {
            line.push('"');
        }
        line.push(c);
    }
    line.push('"');
}

fn push_arg(line: &mut String, arg: Arg<'_>) -> Result<()> {
    match arg {
        Arg::Image(p) => {
            let shown = format!("/{p}");
            check_line_safe(&shown, "path", p)?;
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c.is_empty()) {
                return Err(refused(&shown, "the path is not normalised"));
            }
            push_quoted(line, &shown);
        }
        Arg::Name(n) => {
            check_line_safe(n, "name", n)?;
            if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                return Err(refused(n, "not a single file name"));
            }
            push_quoted(line, n);
        }
        Arg::Target(t) => {
            check_line_safe(t, "symlink target", t)?;
            if t.is_empty() {
                return Err(refused(t, "an empty symlink target"));
            }
            push_quoted(line, t);
        }
        Arg::Xattr(name) => {
            check_line_safe(name, "extended attribute name", name)?;
            if !XATTR_NAMESPACES
                .iter()
                .any(|ns| name.len() > ns.len() && name.starts_with(ns))
            {
                return Err(refused(
                    name,
                    "an extended attribute name must start with user., trusted., security. \
                     or system.",
                ));
            }
            push_quoted(line, name);
        }
        Arg::Host(p) => {
            let s = p.to_string_lossy();
            if !p.is_absolute() || s.contains(['\0', '\n', '\r', '"']) {
                return Err(Error::invalid(format!(
                    "vmdk: work path {s:?} cannot be used in a debugfs script"
                )));
            }
            push_quoted(line, &s);
        }
        Arg::Int(n) => {
            let _ = write!(line, "{n}");
        }
        Arg::Id(n) => {
            if n > u64::from(u32::MAX) {
                return Err(refused("", format!("owner id {n} does not fit in 32 bits")));
            }
            let _ = write!(line, "{n}");
        }
        Arg::Word(w) => line.push_str(w),
        Arg::Time(t) => {
            let _ = write!(line, "@{t}");
        }
        Arg::Mode(m) => {
            let _ = write!(line, "0{m:o}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(command: &'static str, args: &[Arg<'_>]) -> Result<String> {
        let mut s = Script::new();
        s.line(command, args)?;
        Ok(String::from_utf8_lossy(s.as_bytes()).into_owned())
    }

    #[test]
    fn quotes_are_doubled_and_paths_absolute() {
        let line = one("symlink", &[Arg::Image("a \"b\""), Arg::Target("-x \"y")]).unwrap();
        assert_eq!(line, "symlink \"/a \"\"b\"\"\" \"-x \"\"y\"\n");
    }

    #[test]
    fn line_breaks_and_nul_are_refused_in_every_value() {
        for bad in ["a\nb", "a\rb", "a\0b"] {
            for arg in [Arg::Image(bad), Arg::Name(bad), Arg::Target(bad)] {
                let err = one("x", &[arg]).unwrap_err();
                assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
            }
            let name = format!("user.{bad}");
            let err = one("x", &[Arg::Xattr(&name)]).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)));
        }
    }

    #[test]
    fn xattr_names_never_read_as_options() {
        for bad in ["-f/etc/shadow", "-r", "user", "user.", "foo.bar"] {
            let err = one("ea_set", &[Arg::Xattr(bad)]).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}");
        }
        assert!(one("ea_set", &[Arg::Xattr("user.-f")]).is_ok());
    }

    #[test]
    fn a_line_longer_than_debugfs_reads_is_refused() {
        let long = "a".repeat(MAX_LINE);
        let err = one("symlink", &[Arg::Image("l"), Arg::Target(&long)]).unwrap_err();
        assert!(err.to_string().contains("debugfs line"), "{err}");
        // Quotes count twice.
        let quotes = "\"".repeat(MAX_LINE / 2);
        assert!(one("symlink", &[Arg::Image("l"), Arg::Target(&quotes)]).is_err());
        let fits = "b".repeat(MAX_LINE - "symlink \"/l\" \"\"".len());
        assert!(one("symlink", &[Arg::Image("l"), Arg::Target(&fits)]).is_ok());
    }

    #[test]
    fn paths_must_be_normalised_names_single() {
        for bad in ["", "/etc", "a//b", "a/"] {
            assert!(one("rm", &[Arg::Image(bad)]).is_err(), "{bad:?}");
        }
        for bad in ["", "a/b", ".", ".."] {
            assert!(one("mknod", &[Arg::Name(bad)]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_paths_must_be_absolute_and_plain() {
        assert!(one("write", &[Arg::Host(Path::new("rel/f"))]).is_err());
        assert!(one("write", &[Arg::Host(Path::new("/w/\"f"))]).is_err());
        assert!(one("write", &[Arg::Host(Path::new("/w/f"))]).is_ok());
    }
}
