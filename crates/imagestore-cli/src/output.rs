//! Printing results as text or JSON, and errors as one line.

use anyhow::Result;
use imagestore::Image;
use serde::Serialize;

/// Prints an error as one line on stderr: `imagestore: <what failed>: <why>`.
pub fn error_line(e: &anyhow::Error) {
    eprintln!("imagestore: {}", error_text(e));
}

/// The error and its causes joined by `: `, leaving out a cause whose text the line already
/// holds (errors that name their source in their own message would otherwise say it twice).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text.replace('\n', " ")
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// An image as shown to people and machines.
#[derive(Debug, Serialize)]
pub struct ImageView {
    /// Image id.
    pub id: String,
    /// Parent id.
    pub parent: Option<String>,
    /// Store.
    pub store: String,
    /// `/storage/<store>/<id>`.
    pub self_link: String,
    /// Layer sum.
    pub sum: Option<String>,
    /// Layer bytes.
    pub size: u64,
    /// Depth above scratch.
    pub depth: u32,
    /// Backend locator.
    pub locator: String,
    /// Metadata (UTF-8 values as text, others as `base64:...`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The references naming the image (listed by `image ls` and `image info`).
    pub references: Vec<String>,
}

impl From<&Image> for ImageView {
    fn from(i: &Image) -> Self {
        use base64_lite::encode;
        ImageView {
            id: i.id.to_string(),
            parent: i.parent.as_ref().map(ToString::to_string),
            store: i.store.to_string(),
            self_link: i.self_link().to_string(),
            sum: i.sum.as_ref().map(ToString::to_string),
            size: i.size,
            depth: i.depth,
            locator: i.locator.to_string(),
            metadata: i
                .metadata
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        String::from_utf8(v.clone())
                            .unwrap_or_else(|_| format!("base64:{}", encode(v))),
                    )
                })
                .collect(),
            references: Vec::new(),
        }
    }
}

impl ImageView {
    /// The view with the names of the references in `refs` that name the image.
    pub fn with_refs(mut self, refs: &[imagestore::Reference]) -> Self {
        self.references = refs
            .iter()
            .filter(|r| r.target.image.as_str() == self.id)
            .map(|r| r.name.to_string())
            .collect();
        self
    }
}

/// Human-readable bytes (binary units).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Prints images as a table, with the references that name each.
pub fn image_table(images: &[Image], refs: &[imagestore::Reference]) {
    println!(
        "{:<24} {:<24} {:>10} {:>5}  {:<19}  REFERENCES",
        "ID", "PARENT", "SIZE", "DEPTH", "SUM"
    );
    for i in images {
        let sum = i
            .sum
            .as_ref()
            .map(|s| short_digest(&s.to_string()))
            .unwrap_or_else(|| "-".into());
        let names: Vec<&str> = refs
            .iter()
            .filter(|r| r.target.image == i.id)
            .map(|r| r.name.as_str())
            .collect();
        println!(
            "{:<24} {:<24} {:>10} {:>5}  {:<19}  {}",
            short(i.id.as_str()),
            i.parent
                .as_ref()
                .map(|p| short(p.as_str()))
                .unwrap_or_else(|| "-".into()),
            human(i.size),
            i.depth,
            sum,
            if names.is_empty() {
                "-".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
}

fn short(s: &str) -> String {
    if s.len() > 24 {
        format!("{}…", &s[..23])
    } else {
        s.to_owned()
    }
}

fn short_digest(s: &str) -> String {
    if s.len() > 19 {
        s[..19].to_owned()
    } else {
        s.to_owned()
    }
}

/// Standard base64 without another dependency (metadata display only).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
