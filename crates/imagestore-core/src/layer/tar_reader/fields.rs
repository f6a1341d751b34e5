//! Decoding of header fields and PAX records for [`super::TarReader`].

use std::collections::BTreeMap;
use std::io;

use tar::Header;

use crate::error::{Error, Result};

use super::BLOCK;

pub(super) fn truncated(at: u64) -> Error {
    Error::bad_archive(format!(
        "archive is truncated (unexpected end of stream at byte {at})"
    ))
}

pub(super) fn utf8(field: &str, bytes: &[u8], name: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::bad_entry(name, format!("{field} is not valid UTF-8")))
}

pub(super) fn num<T>(r: io::Result<T>, field: &str, name: &str) -> Result<T> {
    r.map_err(|e| Error::bad_entry(name, format!("bad {field} field: {e}")))
}

/// A numeric header field: an empty field (all NUL or spaces, as some writers leave unused
/// fields) reads as zero, like Go's archive/tar; anything else must parse.
pub(super) fn num_field(
    raw: &[u8],
    parsed: io::Result<u64>,
    field: &str,
    name: &str,
) -> Result<u64> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    num(parsed, field, name)
}

/// Errors from the layers below a tar reader (decompressors, limits, the network) arrive as
/// `io::Error`; ones that carry an imagestore [`Error`] are unwrapped, others become
/// bad-archive errors (a corrupt gzip stream, say).
pub fn map_read_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(err) = inner.downcast::<Error>()
        {
            return *err;
        }
        return Error::bad_archive("read failed");
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            Error::bad_archive("archive is truncated (unexpected end of compressed stream)")
        }
        _ => Error::bad_archive(format!("cannot read archive: {e}")),
    }
}

pub(super) fn check_checksum(header: &Header, at: u64) -> Result<()> {
    let bytes = header.as_bytes();
    let sum: u32 = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * 32;
    match header.cksum() {
        Ok(c) if c == sum => Ok(()),
        _ if at == 0 => Err(Error::bad_archive(
            "input is not a tar archive (bad header checksum at byte 0)",
        )),
        _ => Err(Error::bad_archive(format!(
            "corrupt header at byte {at} (checksum mismatch)"
        ))),
    }
}

pub(super) fn pad(n: u64) -> u64 {
    (BLOCK - n % BLOCK) % BLOCK
}

pub(super) fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

pub(super) fn parse_pax_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

pub(super) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nsec = 0u32;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nsec = digits.parse().ok()?;
    }
    // `-1.5` is 1.5 s before the epoch: -2 s plus 0.5 s.
    if s.starts_with('-') && nsec > 0 {
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

/// Parses PAX records (`<len> <key>=<value>\n`) into `out`; later records win, and a record
/// with an empty value removes its key (POSIX: the header's own field counts again), except
/// an extended attribute, whose value may be empty. A key
/// holding a NUL is refused (a reader working on C strings would cut it). `records`
/// counts the records of the entry so far (across all its PAX headers); more than `max` is an
/// error before the record is stored.
pub(super) fn parse_pax(
    payload: &[u8],
    out: &mut BTreeMap<String, Vec<u8>>,
    at: u64,
    records: &mut u64,
    max: u64,
) -> Result<()> {
    let bad = || Error::bad_archive(format!("malformed PAX header at byte {at}"));
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let sp = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > rest.len() {
            return Err(bad());
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").ok_or_else(bad)?;
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let key = std::str::from_utf8(&record[..eq])
            .map_err(|_| bad())?
            .to_owned();
        if key.is_empty() || key.contains('\0') {
            return Err(Error::bad_archive(format!(
                "PAX header at byte {at} has a record whose key is empty or holds a NUL byte"
            )));
        }
        *records += 1;
        if *records > max {
            return Err(Error::bad_archive(format!(
                "PAX header at byte {at} brings its entry past {max} PAX records (the maximum)"
            )));
        }
        let value = &record[eq + 1..];
        if value.is_empty() && !key.starts_with("SCHILY.xattr.") {
            out.remove(&key);
        } else {
            out.insert(key, value.to_vec());
        }
        rest = &rest[len..];
    }
    Ok(())
}
