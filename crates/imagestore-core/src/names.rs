//! Validated names: store names, image ids and owner names.
//!
//! A name is checked once, when it is built, and is then safe to use as a path segment or an
//! object-key segment on every backend: 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._-]`,
//! starting with a letter or digit (so never `.`, `..` or a hidden file), with no `..` inside.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Longest store name, image id or owner name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The id of the root image every store has.
pub const SCRATCH_ID: &str = "scratch";

fn validate(kind: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(format!("{kind} must not be empty")));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "{kind} {:?}… is {} bytes long; the maximum is {MAX_NAME_LEN}",
            &s[..s.char_indices().nth(16).map_or(s.len(), |(i, _)| i)],
            s.len()
        )));
    }
    let first = s.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(Error::invalid(format!(
            "{kind} {s:?} must start with a letter or digit"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(format!(
            "{kind} {s:?} contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    if s.contains("..") {
        return Err(Error::invalid(format!(
            "{kind} {s:?} must not contain \"..\""
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of an image store, such as a host's UUID.
    StoreName,
    "store name"
);
name_type!(
    /// The id of an image (a layer) within a store, such as a chain id in hex, or `scratch`.
    ImageId,
    "image id"
);
name_type!(
    /// The name of something that uses an image (a container, a VM, a build).
    OwnerName,
    "owner name"
);

impl ImageId {
    /// The id of the root image of every store.
    pub fn scratch() -> Self {
        ImageId(SCRATCH_ID.to_owned())
    }

    /// True for the root image.
    pub fn is_scratch(&self) -> bool {
        self.0 == SCRATCH_ID
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for ok in [
            "scratch",
            "564d9d98-fda1-09a4-3e28-6d2a996574d6",
            "a",
            "layer_1.tar",
            &"f".repeat(64),
            &"a".repeat(MAX_NAME_LEN),
        ] {
            assert!(ImageId::new(ok).is_ok(), "{ok:?} rejected");
            assert!(StoreName::new(ok).is_ok(), "{ok:?} rejected");
        }
    }

    #[test]
    fn rejects_separators_dots_and_long_names() {
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "a/b",
            "a\\b",
            "/abs",
            "a b",
            "a\0b",
            "sha256:abc",
            "é",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(
                matches!(ImageId::new(bad), Err(Error::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
    }
}
