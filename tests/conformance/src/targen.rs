//! A seeded generator of odd tar archives for the differential test: ustar, GNU and PAX
//! headers mixed, long names three ways (ustar prefix, GNU long name, PAX path), links,
//! devices, old-GNU sparse files, whiteouts, extension headers that disagree, header-only
//! entries with data, zero blocks in odd places, truncations and flipped bytes.
//!
//! Headers are written field by field here (not with the `tar` crate, whose writer refuses
//! much of this). Archive `i` of a run depends only on `(seed, i)`, so a failing archive is
//! rebuilt from the two numbers.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const BLOCK: usize = 512;

/// The archive number `index` of the run with `seed`.
pub fn archive(seed: u64, index: u64) -> Vec<u8> {
    let mixed = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Gen {
        rng: StdRng::seed_from_u64(mixed),
        files: Vec::new(),
        out: Vec::new(),
    }
    .run()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Ustar,
    Gnu,
    V7,
}

/// One member as the generator plans it.
struct Spec {
    format: Format,
    name: Vec<u8>,
    typ: u8,
    data: Vec<u8>,
    size_field: u64,
    link: Vec<u8>,
    mode: u64,
    uid: u64,
    gid: u64,
    mtime: u64,
    uname: Vec<u8>,
    gname: Vec<u8>,
    dev: (u64, u64),
    pax: Vec<(String, Vec<u8>)>,
    second_pax: Option<Vec<(String, Vec<u8>)>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    sparse: Option<(u64, Vec<(u64, u64)>)>,
}

struct Gen {
    rng: StdRng,
    files: Vec<String>,
    out: Vec<u8>,
}

fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    if s.len() <= width {
        field[..width].copy_from_slice(s.as_bytes());
        field[width] = 0;
    } else {
        // Base-256, as GNU writes numbers too big for octal.
        field.fill(0);
        field[0] = 0x80;
        let bytes = v.to_be_bytes();
        let n = field.len();
        let k = bytes.len().min(n - 1);
        field[n - k..].copy_from_slice(&bytes[bytes.len() - k..]);
    }
}

fn put(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

fn checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// A PAX extended header payload.
fn pax_payload(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

impl Gen {
    fn chance(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.random()).collect()
    }

    fn run(mut self) -> Vec<u8> {
        let entries = self.rng.random_range(0..7);
        for i in 0..entries {
            let spec = self.plan();
            self.emit(&spec);
            if i + 1 < entries && self.chance(2) {
                // A lone zero block between entries.
                self.out.extend_from_slice(&[0u8; BLOCK]);
            }
        }
        match self.rng.random_range(0..100) {
            0..60 => self.out.extend_from_slice(&[0u8; 2 * BLOCK]),
            60..75 => {}
            75..83 => self.out.extend_from_slice(&[0u8; BLOCK]),
            83..90 => {
                let pad = 2 * BLOCK + self.rng.random_range(0..8) * BLOCK;
                self.out.extend(std::iter::repeat_n(0u8, pad));
            }
            90..95 => {
                self.out.extend_from_slice(&[0u8; 2 * BLOCK]);
                let n = self.rng.random_range(1..600);
                let junk = self.bytes(n);
                self.out.extend_from_slice(&junk);
            }
            _ => {
                self.out.extend_from_slice(&[0u8; BLOCK]);
                let spec = self.plan();
                self.emit(&spec);
                self.out.extend_from_slice(&[0u8; 2 * BLOCK]);
            }
        }
        if !self.out.is_empty() && self.chance(8) {
            let at = self.rng.random_range(0..self.out.len());
            self.out.truncate(at);
        }
        if !self.out.is_empty() && self.chance(6) {
            let at = self.rng.random_range(0..self.out.len());
            let bit = 1u8 << self.rng.random_range(0..8);
            self.out[at] ^= bit;
        }
        self.out
    }

    fn name(&mut self, typ: u8) -> String {
        let dirs = ["d", "e", "d/e", "d/e/x"];
        let mut name = match typ {
            b'5' => self.pick(&dirs).to_owned(),
            b'2' => self.pick(&["s", "d/s", "t"]).to_owned(),
            b'3' | b'4' | b'6' => self.pick(&["c", "d/c"]).to_owned(),
            _ => {
                let dir = self.pick(&["", "d/", "e/", "d/e/"]);
                let base = self.pick(&["f", "g", "h", ".wh.f", ".wh.g", ".wh..wh..opq", "f.txt"]);
                format!("{dir}{base}")
            }
        };
        if self.chance(12) {
            let n = self.rng.random_range(90..300);
            name = format!("d/{}", "L".repeat(n));
        }
        match self.rng.random_range(0..100) {
            0..15 => name = format!("./{name}"),
            15..20 => name = format!("/{name}"),
            20..23 => name = name.replacen('/', "//", 1),
            23..25 => name = format!("{name}/../{name}"),
            _ => {}
        }
        if (typ == b'5' && self.chance(50)) || self.chance(2) {
            name.push('/');
        }
        name
    }

    fn plan(&mut self) -> Spec {
        let format = match self.rng.random_range(0..10) {
            0..5 => Format::Ustar,
            5..9 => Format::Gnu,
            _ => Format::V7,
        };
        let typ = match self.rng.random_range(0..100) {
            0..40 => b'0',
            40..45 => 0,
            45..47 => b'7',
            47..62 => b'5',
            62..70 => b'2',
            70..78 => b'1',
            78..82 => b'3',
            82..84 => b'4',
            84..88 => b'6',
            88..94 => b'S',
            94..97 => self.pick(&["D", "V", "M", "N", "K", "X", "A"]).as_bytes()[0],
            _ => b'0',
        };
        let name = self.name(typ);
        let data_len = match self.rng.random_range(0..10) {
            0..3 => 0,
            3 => 511,
            4 => 512,
            5 => 513,
            _ => self.rng.random_range(1..3000),
        };
        let carries_data = matches!(typ, 0 | b'0' | b'7') || (typ != b'S' && self.chance(4));
        let mut data = if carries_data {
            self.bytes(data_len)
        } else {
            Vec::new()
        };
        let mut sparse = None;
        let mut format = format;
        let mut typ = typ;
        if typ == b'S' {
            format = Format::Gnu;
            let real = self.rng.random_range(1..20_000u64);
            let mut map = Vec::new();
            let mut at = 0u64;
            for _ in 0..self.rng.random_range(0..6) {
                let off = at + self.rng.random_range(0..3000);
                let len = self.rng.random_range(0..1500);
                if off + len > real {
                    break;
                }
                map.push((off, len));
                at = off + len;
            }
            let stored: u64 = map.iter().map(|(_, l)| l).sum();
            data = self.bytes(stored as usize);
            sparse = Some((real, map));
        }
        let link = match typ {
            b'1' => {
                if !self.files.is_empty() && self.chance(85) {
                    let i = self.rng.random_range(0..self.files.len());
                    let t = self.files[i].clone();
                    if self.chance(20) { format!("./{t}") } else { t }
                } else {
                    self.pick(&["f", "missing", "/d/f", "../f"]).to_owned()
                }
            }
            b'2' => {
                let t = self
                    .pick(&["f", "../..", "/etc/passwd", "d/e", "x y"])
                    .to_owned();
                if self.chance(10) {
                    format!("{}/{t}", "l".repeat(self.rng.random_range(90..200)))
                } else {
                    t
                }
            }
            _ => String::new(),
        };
        if typ == 0 && format == Format::V7 && self.chance(50) {
            typ = b'0';
        }
        if matches!(typ, 0 | b'0' | b'7' | b'S') {
            self.files.push(name.trim_end_matches('/').to_owned());
        }
        let mut spec = Spec {
            format,
            size_field: data.len() as u64,
            name: name.clone().into_bytes(),
            typ,
            data,
            link: link.clone().into_bytes(),
            mode: *[0o644u64, 0o755, 0o4755, 0o100644, 0o777, 0o7777]
                .get(self.rng.random_range(0..6))
                .unwrap_or(&0o644),
            uid: if self.chance(5) {
                1 << 22
            } else {
                self.rng.random_range(0..2000)
            },
            gid: self.rng.random_range(0..2000),
            mtime: if self.chance(5) {
                0o77777777777
            } else {
                1_700_000_000 + self.rng.random_range(0..1000)
            },
            uname: self.pick(&["", "root", "user"]).as_bytes().to_vec(),
            gname: self.pick(&["", "root", "staff"]).as_bytes().to_vec(),
            dev: (
                if self.chance(5) {
                    1 << 21
                } else {
                    self.rng.random_range(0..300)
                },
                self.rng.random_range(0..300),
            ),
            pax: Vec::new(),
            second_pax: None,
            long_name: None,
            long_link: None,
            sparse,
        };
        if format != Format::V7 && self.chance(35) {
            self.pax(&mut spec, &name, &link);
        }
        if format == Format::Gnu && (name.len() > 100 || self.chance(5)) {
            let mut n = name.clone().into_bytes();
            if self.chance(10) {
                n = self.name(typ).into_bytes();
            }
            n.push(0);
            spec.long_name = Some(n);
        }
        if format == Format::Gnu && (link.len() > 100 || self.chance(3)) {
            let mut l = link.into_bytes();
            l.push(0);
            spec.long_link = Some(l);
        }
        spec
    }

    fn pax(&mut self, spec: &mut Spec, name: &str, link: &str) {
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        if self.chance(50) || name.len() > 100 {
            let v = if self.chance(5) {
                Vec::new()
            } else {
                name.as_bytes().to_vec()
            };
            recs.push(("path".into(), v));
            if self.chance(20) {
                spec.name = b"PaxHeaders.0/short".to_vec();
            }
        }
        if !link.is_empty() && (self.chance(50) || link.len() > 100) {
            recs.push(("linkpath".into(), link.as_bytes().to_vec()));
        }
        if self.chance(25) {
            recs.push(("size".into(), spec.data.len().to_string().into_bytes()));
            if self.chance(50) {
                spec.size_field = 0;
            }
        }
        if self.chance(25) {
            let t = self.pick(&[
                "1700000000.5",
                "1700000000.123456789",
                "1700000000.1234567891",
                "-1.5",
                "0",
                "1700000000",
            ]);
            recs.push(("mtime".into(), t.as_bytes().to_vec()));
        }
        if self.chance(15) {
            recs.push(("uid".into(), b"4294967296".to_vec()));
        }
        if self.chance(15) {
            recs.push(("uname".into(), b"someone".to_vec()));
        }
        if self.chance(25) {
            let n = self.rng.random_range(0..20);
            let v = self.bytes(n);
            let k = self.pick(&["user.a", "security.capability", "trusted.x"]);
            recs.push((format!("SCHILY.xattr.{k}"), v));
        }
        if self.chance(10) {
            recs.push(("comment".into(), b"generated".to_vec()));
        }
        if self.chance(8) {
            let k = self.pick(&["path", "mtime", "uid"]);
            spec.second_pax = Some(vec![(k.into(), b"1".to_vec())]);
        }
        if self.chance(5) {
            // A global header before the entry.
            let g = pax_payload(&[("comment".into(), b"global".to_vec())]);
            self.header_block(
                Format::Ustar,
                b"pax_global_header",
                b'g',
                g.len() as u64,
                b"",
            );
            self.data(&g);
        }
        spec.pax = recs;
    }

    fn header_block(&mut self, format: Format, name: &[u8], typ: u8, size: u64, link: &[u8]) {
        let spec = Spec {
            format,
            name: name.to_vec(),
            typ,
            data: Vec::new(),
            size_field: size,
            link: link.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            dev: (0, 0),
            pax: Vec::new(),
            second_pax: None,
            long_name: None,
            long_link: None,
            sparse: None,
        };
        let h = self.header(&spec);
        self.out.extend_from_slice(&h);
    }

    fn data(&mut self, d: &[u8]) {
        self.out.extend_from_slice(d);
        let pad = (BLOCK - d.len() % BLOCK) % BLOCK;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn header(&mut self, s: &Spec) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        let name = &s.name;
        if s.format == Format::Ustar && name.len() > 100 {
            // Split at a slash into prefix and name when one fits.
            let split = (0..name.len())
                .rev()
                .find(|&i| name[i] == b'/' && i <= 155 && name.len() - i - 1 <= 100);
            match split {
                Some(i) => {
                    put(&mut h[345..500], &name[..i]);
                    put(&mut h[0..100], &name[i + 1..]);
                }
                None => put(&mut h[0..100], name),
            }
        } else {
            put(&mut h[0..100], name);
        }
        octal(&mut h[100..108], s.mode);
        octal(&mut h[108..116], s.uid);
        octal(&mut h[116..124], s.gid);
        octal(&mut h[124..136], s.size_field);
        octal(&mut h[136..148], s.mtime);
        h[156] = s.typ;
        put(&mut h[157..257], &s.link);
        match s.format {
            Format::Ustar => put(&mut h[257..265], b"ustar\x0000"),
            Format::Gnu => put(&mut h[257..265], b"ustar  \x00"),
            Format::V7 => {}
        }
        if s.format != Format::V7 {
            put(&mut h[265..297], &s.uname);
            put(&mut h[297..329], &s.gname);
            if matches!(s.typ, b'3' | b'4') || self.chance(3) {
                octal(&mut h[329..337], s.dev.0);
                octal(&mut h[337..345], s.dev.1);
            }
        }
        if let Some((real, map)) = &s.sparse {
            for (i, (off, len)) in map.iter().take(4).enumerate() {
                let at = 386 + i * 24;
                octal(&mut h[at..at + 12], *off);
                octal(&mut h[at + 12..at + 24], *len);
            }
            h[482] = u8::from(map.len() > 4);
            octal(&mut h[483..495], *real);
        }
        checksum(&mut h);
        h
    }

    fn emit(&mut self, s: &Spec) {
        for recs in [Some(&s.pax), s.second_pax.as_ref()].into_iter().flatten() {
            if recs.is_empty() {
                continue;
            }
            let p = pax_payload(recs);
            self.header_block(
                Format::Ustar,
                b"PaxHeaders.0/entry",
                b'x',
                p.len() as u64,
                b"",
            );
            self.data(&p);
        }
        if let Some(l) = &s.long_link {
            self.header_block(Format::Gnu, b"././@LongLink", b'K', l.len() as u64, b"");
            self.data(l);
        }
        if let Some(n) = &s.long_name {
            self.header_block(Format::Gnu, b"././@LongLink", b'L', n.len() as u64, b"");
            self.data(n);
        }
        let h = self.header(s);
        self.out.extend_from_slice(&h);
        if let Some((_, map)) = &s.sparse
            && map.len() > 4
        {
            let rest = &map[4..];
            for (c, chunk) in rest.chunks(21).enumerate() {
                let mut ext = [0u8; BLOCK];
                for (i, (off, len)) in chunk.iter().enumerate() {
                    octal(&mut ext[i * 24..i * 24 + 12], *off);
                    octal(&mut ext[i * 24 + 12..i * 24 + 24], *len);
                }
                ext[504] = u8::from((c + 1) * 21 < rest.len());
                self.out.extend_from_slice(&ext);
            }
        }
        let data = s.data.clone();
        self.data(&data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_reproducible_and_varied() {
        assert_eq!(archive(7, 3), archive(7, 3));
        let distinct: std::collections::HashSet<Vec<u8>> = (0..50).map(|i| archive(7, i)).collect();
        assert!(distinct.len() > 40, "{}", distinct.len());
    }

    #[test]
    fn pax_records_carry_their_own_length() {
        let p = pax_payload(&[("path".into(), b"abc".to_vec())]);
        assert_eq!(p, b"12 path=abc\n");
        let long = pax_payload(&[("k".into(), vec![b'v'; 95])]);
        // 95 + "k=" + " " + "\n" is 99 bytes; the 3-digit length makes the record 102.
        assert_eq!(&long[..4], b"102 ");
        assert_eq!(long.len(), 102);
    }
}
