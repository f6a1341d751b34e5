//! Differential testing of the tar reader against a second parser: Go's `archive/tar`, run as
//! the `tarlist` program of `xtask/tarlist/` (`cargo xtask differential` builds it).
//!
//! The rule: every archive is either accepted by both readers with the same entries, or
//! refused by ours. An archive ours accepts but Go refuses, or that both accept with different
//! entries, is a disagreement: the two readers would see different layers, which is what tar
//! smuggling exploits.
//!
//! Go reports raw names; [`go_items`] normalises them the way layers are read (`./a` → `a`,
//! trailing and doubled slashes dropped, `.wh.` names become whiteout and opaque markers, the
//! root directory and AUFS metadata are left out), written here again rather than calling the
//! engine, so a normalisation bug shows up as a disagreement too.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use imagestore::layer::ingest::{IngestLimits, sniff, toc_of_slice};
use imagestore::layer::toc::{Compression, DigestForm, EntryKind, TocEntry};
use imagestore::layer::validate::EmptyView;
use serde_json::Value;

/// The environment variable naming the built `tarlist` program.
pub const TARLIST_VAR: &str = "IMAGESTORE_TARLIST";

/// Largest uncompressed archive compared (bigger ones are refused by ours under these limits).
const MAX_PLAIN: u64 = 64 << 20;

/// One entry, in the form both sides are compared in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Normalised path (for markers: the path deleted, or the directory made opaque).
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo`, `whiteout`, `opaque`,
    /// or `type <c>` for anything else Go reports.
    pub kind: String,
    /// Permission bits (`0o7777`); 0 for markers.
    pub mode: u32,
    /// Owner ids (wide enough for anything either side reports).
    pub owner: (i128, i128),
    /// Owner names.
    pub names: (String, String),
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Logical size of files; 0 for the rest.
    pub size: u64,
    /// Link target: as written for symlinks, normalised for hardlinks.
    pub link: Option<String>,
    /// Device numbers of character and block devices.
    pub dev: Option<(i64, i64)>,
    /// Extended attributes, values in hex.
    pub xattrs: BTreeMap<String, String>,
    /// sha256 of a file's logical contents, hex.
    pub sha256: Option<String>,
}

impl Item {
    fn marker(path: String, kind: &str) -> Item {
        Item {
            path,
            kind: kind.to_owned(),
            mode: 0,
            owner: (0, 0),
            names: (String::new(), String::new()),
            mtime: (0, 0),
            size: 0,
            link: None,
            dev: None,
            xattrs: BTreeMap::new(),
            sha256: None,
        }
    }
}

/// The limits ours reads with here: the defaults, with the uncompressed size bounded so a
/// decompression bomb costs nothing.
pub fn limits() -> IngestLimits {
    IngestLimits {
        max_uncompressed: MAX_PLAIN,
        ..IngestLimits::default()
    }
}

/// What our reader makes of `bytes` (any supported compression): the entries, or the error.
pub fn our_items(bytes: &[u8]) -> std::result::Result<Vec<Item>, String> {
    let toc = toc_of_slice(bytes, &EmptyView, limits()).map_err(|e| e.to_string())?;
    let mut items: Vec<Item> = toc.entries.iter().map(our_item).collect();
    // A sparse file's TOC digest covers its map and stored bytes; Go hashes the logical
    // contents, so compute those from the stored segments, holes as zeros.
    if toc
        .entries
        .iter()
        .any(|e| e.digest_form == DigestForm::SparseMap)
    {
        let plain = decompress(bytes, toc.compression).map_err(|e| e.to_string())?;
        for (item, e) in items.iter_mut().zip(&toc.entries) {
            if e.digest_form == DigestForm::SparseMap {
                item.sha256 = logical_sha256(&plain, e);
            }
        }
    }
    Ok(items)
}

/// The plain tar inside a layer's bytes.
fn decompress(bytes: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(bytes),
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(bytes)?.read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// sha256 of a sparse file's logical contents, from its stored segments in the plain tar
/// `bytes`; `None` when the data is not there.
fn logical_sha256(bytes: &[u8], e: &TocEntry) -> Option<String> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let zeros = [0u8; 1 << 16];
    let mut at = 0u64;
    let mut stored = usize::try_from(e.data_offset).ok()?;
    for (off, len) in e.sparse.as_deref().unwrap_or_default() {
        let mut gap = off.checked_sub(at)?;
        while gap > 0 {
            let n = gap.min(zeros.len() as u64) as usize;
            h.update(&zeros[..n]);
            gap -= n as u64;
        }
        let len = usize::try_from(*len).ok()?;
        h.update(bytes.get(stored..stored.checked_add(len)?)?);
        stored += len;
        at = off + len as u64;
    }
    let mut tail = e.size.checked_sub(at)?;
    while tail > 0 {
        let n = tail.min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        tail -= n as u64;
    }
    Some(format!("{:x}", h.finalize()))
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Hardlink => "hardlink",
        EntryKind::Char => "char",
        EntryKind::Block => "block",
        EntryKind::Fifo => "fifo",
        EntryKind::Whiteout => "whiteout",
        EntryKind::Opaque => "opaque",
    }
}

fn our_item(t: &TocEntry) -> Item {
    if t.kind.is_marker() {
        return Item::marker(t.path.clone(), kind_name(t.kind));
    }
    let file = t.kind == EntryKind::File;
    Item {
        path: t.path.clone(),
        kind: kind_name(t.kind).to_owned(),
        mode: t.mode & 0o7777,
        owner: (i128::from(t.uid), i128::from(t.gid)),
        names: (
            t.uname.clone().unwrap_or_default(),
            t.gname.clone().unwrap_or_default(),
        ),
        mtime: (t.mtime, t.mtime_nsec),
        size: if file { t.size } else { 0 },
        link: match t.kind {
            EntryKind::Symlink | EntryKind::Hardlink => t.link.clone(),
            _ => None,
        },
        dev: match t.kind {
            EntryKind::Char | EntryKind::Block => t.dev.map(|(a, b)| (i64::from(a), i64::from(b))),
            _ => None,
        },
        xattrs: t.xattrs.iter().map(|(k, v)| (k.clone(), hex(v))).collect(),
        sha256: if file {
            t.digest.as_ref().map(|d| d.hex().to_owned())
        } else {
            None
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A tar name normalised as layers read it: `None` when it climbs out of the root.
pub fn normalize(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// A raw byte field Go reported in hex, as text (non-UTF-8 bytes are shown, never dropped).
fn text_of(entry: &Value, field: &str) -> String {
    let h = entry[field].as_str().unwrap_or_default();
    match unhex(h).map(String::from_utf8) {
        Some(Ok(s)) => s,
        _ => format!("<not UTF-8: {h}>"),
    }
}

/// Turns Go's entries (the `entries` array `tarlist` prints) into normalised items.
pub fn go_items(entries: &[Value]) -> Vec<Item> {
    let mut out = Vec::new();
    for e in entries {
        let name = text_of(e, "name_hex");
        let typ = e["type"].as_str().unwrap_or_default();
        let kind = match typ {
            "0" | "7" | "S" => "file".to_owned(),
            "5" => "dir".to_owned(),
            "2" => "symlink".to_owned(),
            "1" => "hardlink".to_owned(),
            "3" => "char".to_owned(),
            "4" => "block".to_owned(),
            "6" => "fifo".to_owned(),
            other => format!("type {other:?}"),
        };
        let Some(path) = normalize(&name) else {
            out.push(Item::marker(format!("<escapes: {name}>"), &kind));
            continue;
        };
        if path.is_empty() && kind == "dir" {
            continue;
        }
        let (dir, base) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path.as_str()),
        };
        if base == ".wh..wh..opq" {
            out.push(Item::marker(dir.to_owned(), "opaque"));
            continue;
        }
        if base.starts_with(".wh..wh.") {
            continue;
        }
        if let Some(rest) = base.strip_prefix(".wh.") {
            let target = if dir.is_empty() {
                rest.to_owned()
            } else {
                format!("{dir}/{rest}")
            };
            out.push(Item::marker(target, "whiteout"));
            continue;
        }
        let num = |k: &str| e[k].as_i64().unwrap_or(i64::MIN);
        let file = kind == "file";
        let link_raw = text_of(e, "link_hex");
        let link = match kind.as_str() {
            "symlink" => Some(link_raw),
            "hardlink" => {
                Some(normalize(&link_raw).unwrap_or_else(|| format!("<escapes: {link_raw}>")))
            }
            _ => None,
        };
        let dev = match kind.as_str() {
            "char" | "block" => Some((num("devmajor"), num("devminor"))),
            _ => None,
        };
        let xattrs = e["xattrs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Item {
            path,
            kind,
            mode: (num("mode") & 0o7777) as u32,
            owner: (i128::from(num("uid")), i128::from(num("gid"))),
            names: (
                e["uname"].as_str().unwrap_or_default().to_owned(),
                e["gname"].as_str().unwrap_or_default().to_owned(),
            ),
            mtime: (num("mtime"), num("mtime_nsec") as u32),
            size: if file { num("size") as u64 } else { 0 },
            link,
            dev,
            xattrs,
            sha256: if file {
                e["sha256"].as_str().map(str::to_owned)
            } else {
                None
            },
        });
    }
    out
}

/// What Go's `archive/tar` said about one archive.
#[derive(Debug, Clone)]
pub struct GoListing {
    /// The entries it read (up to the error, if any).
    pub entries: Vec<Value>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// Runs `tarlist -batch` over files, returning Go's listing of each, in order.
pub fn go_list(tarlist: &Path, files: &[PathBuf]) -> Result<Vec<GoListing>> {
    let mut child = Command::new(tarlist)
        .arg("-batch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", tarlist.display()))?;
    let mut stdin = child.stdin.take().context("tarlist's stdin")?;
    let paths: String = files.iter().map(|p| format!("{}\n", p.display())).collect();
    // Write on a thread: the lister answers while it reads, and both pipes are bounded.
    let writer = std::thread::spawn(move || stdin.write_all(paths.as_bytes()));
    let stdout = child.stdout.take().context("tarlist's stdout")?;
    let mut out = Vec::with_capacity(files.len());
    for line in BufReader::new(stdout).lines() {
        let v: Value = serde_json::from_str(&line?).context("tarlist's output")?;
        out.push(GoListing {
            entries: v["entries"].as_array().cloned().unwrap_or_default(),
            error: v["error"].as_str().map(str::to_owned),
        });
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the path writer panicked"))??;
    let status = child.wait()?;
    if !status.success() {
        bail!("tarlist failed with {status}");
    }
    if out.len() != files.len() {
        bail!("tarlist listed {} of {} files", out.len(), files.len());
    }
    Ok(out)
}

/// The plain tar inside `bytes` (decompressed, bounded), for Go, which reads plain tars only.
pub fn plain(bytes: &[u8]) -> Result<Vec<u8>> {
    let compression = sniff(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut r: Box<dyn Read + '_> = match compression {
        Compression::None => return Ok(bytes.to_vec()),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes)?),
    };
    let mut out = Vec::new();
    (&mut r).take(MAX_PLAIN + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_PLAIN {
        bail!("decompresses to more than {MAX_PLAIN} bytes");
    }
    Ok(out)
}

/// How the two readers compare on one archive; `None` when they agree under the rule.
pub fn judge(ours: &[Item], go: &GoListing) -> Option<String> {
    if let Some(e) = &go.error {
        return Some(format!(
            "ours accepts {} entries; Go's archive/tar refuses: {e}",
            ours.len()
        ));
    }
    let theirs = go_items(&go.entries);
    if theirs == ours {
        return None;
    }
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        if a != b {
            return Some(format!("entry {i} differs:\n  ours: {a:?}\n  go:   {b:?}"));
        }
    }
    Some(format!(
        "ours reads {} entries, Go {}; first extra: {:?}",
        ours.len(),
        theirs.len(),
        if ours.len() > theirs.len() {
            ours.get(theirs.len())
        } else {
            theirs.get(ours.len())
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_layers() {
        assert_eq!(normalize("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("/a/./c/../d").as_deref(), Some("a/d"));
        assert_eq!(normalize("a/../.."), None);
        assert_eq!(normalize("./").as_deref(), Some(""));
    }

    #[test]
    fn go_whiteouts_and_root_become_markers() {
        let e = |name: &str, t: &str| serde_json::json!({"name_hex": hex(name.as_bytes()), "type": t, "link_hex": ""});
        let items = go_items(&[
            e("./", "5"),
            e("d/.wh.x", "0"),
            e("d/.wh..wh..opq", "0"),
            e("d/.wh..wh.plnk", "5"),
            e("./e/", "5"),
        ]);
        let got: Vec<(&str, &str)> = items
            .iter()
            .map(|i| (i.path.as_str(), i.kind.as_str()))
            .collect();
        assert_eq!(got, [("d/x", "whiteout"), ("d", "opaque"), ("e", "dir")]);
    }

    #[test]
    fn a_go_refusal_of_an_accepted_archive_is_a_disagreement() {
        let go = GoListing {
            entries: Vec::new(),
            error: Some("archive/tar: invalid tar header".into()),
        };
        let verdict = judge(&[], &go);
        assert!(verdict.is_some_and(|v| v.contains("invalid tar header")));
    }
}

/// A construct in an archive that the two readers are known to read differently (see
/// [`features`]). The differential test names the ones it tolerates until our reader refuses
/// them; that list must end up empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// A single zero block followed by non-zero data or a partial block: Go stops with an
    /// error, ours ends the archive there and ignores the rest.
    LoneZeroBlock,
    /// Two PAX extended headers before one entry: Go uses only the last, ours merges them.
    StackedPax,
    /// A GNU long name (or link) and a PAX path (or linkpath) on one entry: Go uses the GNU
    /// one, ours the PAX one.
    LongNameAndPaxPath,
    /// A header-only entry (link, device, directory, fifo, or an old-style `'\0'` entry
    /// named `dir/`) with a non-zero size: Go reads no data and takes the next block as a
    /// header, ours skips `size` bytes.
    HeaderOnlyWithData,
    /// A negative PAX mtime with a fraction (`-1.5`): Go reads -2 s + 0.5 s, ours -1 s + 0.5 s.
    NegativeFractionalMtime,
    /// A regular (`'0'`) entry whose name ends in `/`: ours reads a directory, Go a file (Go
    /// applies the old convention to type `'\0'` only).
    RegularWithTrailingSlash,
    /// A PAX record whose key holds a NUL byte (`SCHILY.xattr.a\0b`): Go refuses the
    /// archive, ours keeps an attribute name the kernel would cut at the NUL.
    NulInPaxKey,
    /// A PAX record with an empty value (`path=`): Go keeps the header's field, ours takes the
    /// empty value (an empty path is the root, so the entry vanishes).
    EmptyPaxValue,
    /// A GNU-magic header whose access-time field holds text: Go reads it as a ustar name
    /// prefix (compatibility with its own 1.7 writer), ours ignores it.
    GnuPrefix,
}

fn octal_field(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        return Some(f[1..].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
    }
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// The records of a PAX payload, as far as they parse.
fn pax_records(mut rest: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    while let Some(sp) = rest.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        let Some(record) = rest.get(sp + 1..len) else {
            break;
        };
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .unwrap_or(record.len());
        out.push((&record[..eq], record.get(eq + 1..).unwrap_or_default()));
        rest = &rest[len..];
    }
    out
}

/// The largest logical size an old-GNU sparse header of a plain tar declares (0 if none).
/// Both readers hash a sparse file's holes, so a tiny archive can cost minutes.
pub fn declared_sparse_size(tar: &[u8]) -> u64 {
    let mut max = 0;
    let mut pos = 0usize;
    while let Some(h) = tar.get(pos..pos + 512) {
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let Some(size) = octal_field(&h[124..136]) else {
            break;
        };
        if h[156] == b'S' {
            max = max.max(octal_field(&h[483..495]).unwrap_or(u64::MAX));
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        pos = pos
            .saturating_add(512)
            .saturating_add(size.div_ceil(512).saturating_mul(512));
    }
    max
}

/// The constructs of [`Feature`] a plain tar contains, found by a minimal walk of its headers
/// (independent of both readers).
pub fn features(tar: &[u8]) -> Vec<Feature> {
    let mut found = Vec::new();
    let mut add = |f: Feature| {
        if !found.contains(&f) {
            found.push(f);
        }
    };
    let block = |at: usize| tar.get(at..at + 512);
    let (mut pos, mut pax_headers, mut long, mut pax_path) = (0usize, 0, false, false);
    let (mut slash, mut pax_size) = (false, None::<usize>);
    while let Some(h) = block(pos) {
        if h.iter().all(|b| *b == 0) {
            // Go ends cleanly only at the stream's end or at a second zero block.
            let rest = tar.get(pos + 512..).unwrap_or_default();
            if !rest.is_empty() && block(pos + 512).is_none_or(|n| n.iter().any(|b| *b != 0)) {
                add(Feature::LoneZeroBlock);
            }
            break;
        }
        let Some(size) = octal_field(&h[124..136]) else {
            break;
        };
        let mut size = usize::try_from(size).unwrap_or(usize::MAX);
        if !matches!(h[156], b'x' | b'g' | b'L' | b'K') {
            size = pax_size.unwrap_or(size);
        }
        if h[156] == b'S' && h[482] != 0 {
            // Old-GNU sparse map extension blocks sit between the header and the data.
            while tar.get(pos + 512 + 504).is_some_and(|b| *b != 0) {
                pos += 512;
            }
            pos += 512;
        }
        let data = tar.get(pos + 512..).unwrap_or_default();
        let data = &data[..size.min(data.len())];
        let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        match h[156] {
            b'x' => {
                pax_headers += 1;
                if pax_headers > 1 {
                    add(Feature::StackedPax);
                }
                for (k, v) in pax_records(data) {
                    if k.contains(&0) {
                        add(Feature::NulInPaxKey);
                    }
                    if v.is_empty() {
                        add(Feature::EmptyPaxValue);
                    }
                    match k {
                        b"path" | b"linkpath" => {
                            pax_path = true;
                            slash |= k == b"path" && v.ends_with(b"/");
                        }
                        b"size" => {
                            pax_size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
                        }
                        b"mtime" if v.starts_with(b"-") && v.contains(&b'.') => {
                            add(Feature::NegativeFractionalMtime);
                        }
                        _ => {}
                    }
                }
            }
            b'L' | b'K' => {
                long = true;
                let name = data.split(|b| *b == 0).next().unwrap_or_default();
                slash |= h[156] == b'L' && name.ends_with(b"/");
            }
            b'g' => {}
            t => {
                if &h[257..265] == b"ustar  \0"
                    && h[345] != 0
                    && octal_field(&h[345..357]).is_none()
                {
                    add(Feature::GnuPrefix);
                }
                if long && pax_path {
                    add(Feature::LongNameAndPaxPath);
                }
                slash |= name_end > 0 && h[name_end - 1] == b'/';
                if (matches!(t, b'1'..=b'6') || (t == 0 && slash)) && size > 0 {
                    add(Feature::HeaderOnlyWithData);
                }
                if t == b'0' && slash {
                    add(Feature::RegularWithTrailingSlash);
                }
                (pax_headers, long, pax_path, slash, pax_size) = (0, false, false, false, None);
            }
        }
        pos = pos
            .saturating_add(512)
            .saturating_add(size.div_ceil(512).saturating_mul(512));
    }
    found
}
