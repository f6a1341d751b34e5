//! VIC's `FilterSpec`: which paths an export or import keeps, and how it renames them.
//!
//! Semantics (VIC `lib/archive`): a path is excluded when the longest inclusion that is a
//! string prefix of it is shorter than the longest such exclusion (no match counts as -1, the
//! empty string matches everything, ties keep the path). Paths are compared without a leading
//! `/`. A kept path then loses the strip prefix and is placed under the rebase path. The wire
//! form is base64 (standard alphabet) of the JSON
//! `{"Inclusions":{"p":{}},"Exclusions":{},"RebasePath":"","StripPath":""}`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layer::path;

/// What a path given to [`FilterSpec::from_types`] is for (VIC's `FilterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterType {
    /// Keep paths under it.
    Include = 0,
    /// Drop paths under it.
    Exclude = 1,
    /// Place every kept path under it.
    Rebase = 2,
    /// Remove it from the front of every kept path.
    Strip = 3,
}

impl FilterType {
    /// VIC's numeric form.
    pub fn from_code(n: i64) -> Result<Self> {
        match n {
            0 => Ok(FilterType::Include),
            1 => Ok(FilterType::Exclude),
            2 => Ok(FilterType::Rebase),
            3 => Ok(FilterType::Strip),
            other => Err(Error::invalid(format!(
                "invalid filter specification: {other}"
            ))),
        }
    }
}

/// Inclusions, exclusions, one rebase path and one strip path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterSpec {
    /// Path prefixes to keep.
    pub inclusions: BTreeSet<String>,
    /// Path prefixes to drop.
    pub exclusions: BTreeSet<String>,
    /// Prefix every kept path is placed under.
    pub rebase: String,
    /// Prefix removed from every kept path.
    pub strip: String,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "Inclusions", default)]
    inclusions: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Exclusions", default)]
    exclusions: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "RebasePath", default)]
    rebase: String,
    #[serde(rename = "StripPath", default)]
    strip: String,
}

fn clean(p: &str) -> String {
    p.trim_start_matches('/').to_owned()
}

impl FilterSpec {
    /// The filter that keeps everything unchanged.
    pub fn all() -> Self {
        FilterSpec::default()
    }

    /// True if the filter keeps everything unchanged.
    pub fn is_identity(&self) -> bool {
        self.exclusions.is_empty() && self.rebase.is_empty() && self.strip.is_empty()
    }

    /// VIC's `CreateFilterSpec`: one rebase and one strip path at most.
    pub fn from_types<'a>(items: impl IntoIterator<Item = (&'a str, FilterType)>) -> Result<Self> {
        let mut f = FilterSpec::default();
        let (mut rebase, mut strip) = (false, false);
        for (p, t) in items {
            match t {
                FilterType::Include => {
                    f.inclusions.insert(clean(p));
                }
                FilterType::Exclude => {
                    f.exclusions.insert(clean(p));
                }
                FilterType::Rebase => {
                    if rebase {
                        return Err(Error::invalid(
                            "error creating filter spec: only one rebase path allowed",
                        ));
                    }
                    rebase = true;
                    f.rebase = clean(p);
                }
                FilterType::Strip => {
                    if strip {
                        return Err(Error::invalid(
                            "error creating filter spec: only one strip path allowed",
                        ));
                    }
                    strip = true;
                    f.strip = clean(p);
                }
            }
        }
        f.check()?;
        Ok(f)
    }

    fn check(&self) -> Result<()> {
        if !self.rebase.is_empty() {
            path::normalize(&self.rebase).map_err(|_| {
                Error::invalid(format!("rebase path {:?} escapes the root", self.rebase))
            })?;
        }
        Ok(())
    }

    /// VIC's `Excludes`: true when `p` (leading `/` ignored) is filtered out.
    pub fn excludes(&self, p: &str) -> bool {
        let p = p.trim_start_matches('/');
        let longest = |set: &BTreeSet<String>| -> i64 {
            set.iter()
                .filter(|pre| p.starts_with(pre.as_str()))
                .map(|pre| pre.len() as i64)
                .max()
                .unwrap_or(-1)
        };
        longest(&self.inclusions) < longest(&self.exclusions)
    }

    /// The path `p` (normalised) becomes: strip prefix removed, placed under the rebase path,
    /// normalised. `None` when nothing of it is left (it was the strip path itself).
    pub fn map_path(&self, p: &str) -> Result<Option<String>> {
        let stripped = if self.strip.is_empty() {
            p
        } else {
            p.strip_prefix(self.strip.as_str()).unwrap_or(p)
        };
        let joined = if self.rebase.is_empty() {
            stripped.to_owned()
        } else {
            format!("{}/{}", self.rebase, stripped)
        };
        let out = path::normalize(&joined)
            .map_err(|_| Error::invalid(format!("filter maps {p:?} outside the root")))?;
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    /// Applies the whole filter: `None` if `p` is excluded or maps to nothing.
    pub fn apply(&self, p: &str) -> Result<Option<String>> {
        if self.excludes(p) {
            return Ok(None);
        }
        self.map_path(p)
    }

    /// The wire form: base64 of VIC's JSON.
    pub fn encode(&self) -> String {
        let set = |s: &BTreeSet<String>| -> Option<BTreeMap<String, serde_json::Value>> {
            Some(
                s.iter()
                    .map(|k| (k.clone(), serde_json::json!({})))
                    .collect(),
            )
        };
        let wire = Wire {
            inclusions: set(&self.inclusions),
            exclusions: set(&self.exclusions),
            rebase: self.rebase.clone(),
            strip: self.strip.clone(),
        };
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// Parses the wire form; the empty string is the identity filter.
    pub fn decode(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Ok(FilterSpec::default());
        }
        if s.len() > 1 << 20 {
            return Err(Error::invalid("filter spec is larger than 1 MiB"));
        }
        let json = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| Error::invalid(format!("filter spec is not base64: {e}")))?;
        if json.is_empty() {
            return Ok(FilterSpec::default());
        }
        let wire: Wire = serde_json::from_slice(&json)
            .map_err(|e| Error::invalid(format!("filter spec is not valid JSON: {e}")))?;
        let f = FilterSpec {
            inclusions: wire
                .inclusions
                .unwrap_or_default()
                .into_keys()
                .map(|k| clean(&k))
                .collect(),
            exclusions: wire
                .exclusions
                .unwrap_or_default()
                .into_keys()
                .map(|k| clean(&k))
                .collect(),
            rebase: clean(&wire.rebase),
            strip: clean(&wire.strip),
        };
        f.check()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_ties_include() -> Result<()> {
        let f = FilterSpec::from_types([
            ("/", FilterType::Exclude),
            ("/etc", FilterType::Include),
            ("/etc/ssl", FilterType::Exclude),
            ("/etc/ssl/certs", FilterType::Include),
        ])?;
        assert!(f.excludes("usr/bin"));
        assert!(!f.excludes("etc/passwd"));
        assert!(f.excludes("etc/ssl/private"));
        assert!(!f.excludes("/etc/ssl/certs/ca.pem"));
        // "" matches everything: excluding "" and including "" ties, so kept.
        let tie = FilterSpec::from_types([("", FilterType::Exclude), ("/", FilterType::Include)])?;
        assert!(!tie.excludes("x"));
        assert!(!FilterSpec::all().excludes("anything"));
        Ok(())
    }

    #[test]
    fn strip_and_rebase() -> Result<()> {
        let f = FilterSpec::from_types([
            ("/var/lib", FilterType::Strip),
            ("/data", FilterType::Rebase),
        ])?;
        assert_eq!(f.map_path("var/lib/x/y")?, Some("data/x/y".into()));
        assert_eq!(f.map_path("etc/hosts")?, Some("data/etc/hosts".into()));
        let s = FilterSpec::from_types([("tmp", FilterType::Strip)])?;
        assert_eq!(s.map_path("tmp")?, None);
        assert!(
            FilterSpec::from_types([("a", FilterType::Rebase), ("b", FilterType::Rebase)]).is_err()
        );
        assert!(
            FilterSpec::from_types([("a", FilterType::Strip), ("b", FilterType::Strip)]).is_err()
        );
        assert!(FilterType::from_code(7).is_err());
        assert!(FilterSpec::from_types([("../up", FilterType::Rebase)]).is_err());
        Ok(())
    }

    #[test]
    fn wire_form_matches_vic() -> Result<()> {
        // base64 of {"Inclusions":{"etc":{}},"Exclusions":{"":{}},"RebasePath":"x","StripPath":""}
        let go = base64::engine::general_purpose::STANDARD.encode(
            br#"{"Inclusions":{"/etc":{}},"Exclusions":{"":{}},"RebasePath":"x","StripPath":""}"#,
        );
        let f = FilterSpec::decode(&go)?;
        assert!(f.inclusions.contains("etc"));
        assert!(f.exclusions.contains(""));
        assert_eq!(f.rebase, "x");
        assert_eq!(FilterSpec::decode(&f.encode())?, f);
        assert_eq!(FilterSpec::decode("")?, FilterSpec::default());
        let nulls = base64::engine::general_purpose::STANDARD.encode(br#"{"Inclusions":null}"#);
        assert_eq!(FilterSpec::decode(&nulls)?, FilterSpec::default());
        assert!(FilterSpec::decode("!!!").is_err());
        Ok(())
    }
}
