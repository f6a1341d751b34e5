//! Writing a chain flattened into one stream-optimized disk (the form vSphere imports through
//! OVF/NFC): compressed grains behind grain markers, then grain tables, the grain directory and
//! a footer, each behind a metadata marker, and an end-of-stream marker. The header's
//! `gdOffset` is `GD_AT_END`; readers find the directory through the footer.

use std::io::{self, Write};

use flate2::Compression;
use flate2::write::ZlibEncoder;

use super::chain::Chain;
use super::descriptor::Descriptor;
use super::header::{
    COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE, GD_AT_END, Header,
};
use super::{GRAIN, GRAIN_SECTORS, GTES_PER_GT, NO_PARENT_CID, SECTOR, grains_of, gts_of};

const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

struct Out<W> {
    w: W,
    sector: u64,
}

impl<W: Write> Out<W> {
    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        let pad = (SECTOR - bytes.len() as u64 % SECTOR) % SECTOR;
        self.w.write_all(&vec![0u8; pad as usize])?;
        self.sector += (bytes.len() as u64 + pad) / SECTOR;
        Ok(())
    }

    fn marker(&mut self, sectors: u64, kind: u32) -> io::Result<()> {
        let mut m = [0u8; 512];
        m[0..8].copy_from_slice(&sectors.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        self.write_padded(&m)
    }
}

/// What a stream-optimized export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Grains written (all-zero grains are left out).
    pub grains: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes the merged contents of `chain` as a stream-optimized disk named `file_name` to `w`.
pub fn write_stream_optimized<W: Write>(
    chain: &Chain,
    file_name: &str,
    cid: u32,
    w: W,
) -> io::Result<StreamStats> {
    let capacity = chain.capacity();
    let descriptor = Descriptor {
        cid,
        parent_cid: NO_PARENT_CID,
        create_type: "streamOptimized".into(),
        parent_hint: None,
        capacity,
        extent_file: file_name.to_owned(),
        extent_kind: super::format::ExtentKind::Sparse,
    };
    let mut header = Header::sparse(capacity, 0, GD_AT_END, GRAIN_SECTORS);
    header.version = 3;
    header.flags = FLAG_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS;
    header.compress_algorithm = COMPRESS_DEFLATE;
    let mut out = Out { w, sector: 0 };
    out.write_padded(&header.to_bytes())?;
    let text = descriptor.to_text();
    let mut desc = vec![0u8; (header.descriptor_size * SECTOR) as usize];
    let n = text.len().min(desc.len());
    desc[..n].copy_from_slice(&text.as_bytes()[..n]);
    out.write_padded(&desc)?;
    out.write_padded(&vec![0u8; ((GRAIN_SECTORS - out.sector) * SECTOR) as usize])?;

    let mut gt = vec![0u32; (gts_of(capacity) * GTES_PER_GT) as usize];
    let mut grain = vec![0u8; GRAIN as usize];
    let mut grains = 0u64;
    let mut compressed = Vec::with_capacity(GRAIN as usize);
    for g in chain.allocated() {
        if g >= grains_of(capacity) {
            break;
        }
        chain.read_grain(g, &mut grain)?;
        if grain.iter().all(|b| *b == 0) {
            continue;
        }
        compressed.clear();
        let mut enc = ZlibEncoder::new(&mut compressed, Compression::fast());
        enc.write_all(&grain)?;
        enc.finish()?;
        let mut rec = Vec::with_capacity(12 + compressed.len());
        rec.extend_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
        rec.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        rec.extend_from_slice(&compressed);
        gt[g as usize] = u32::try_from(out.sector)
            .map_err(|_| io::Error::other("stream-optimized disk larger than 2 TiB"))?;
        out.write_padded(&rec)?;
        grains += 1;
    }
    let num_gts = gts_of(capacity);
    let mut gd = vec![0u32; num_gts as usize];
    for (t, entry) in gd.iter_mut().enumerate() {
        let table = &gt[t * GTES_PER_GT as usize..(t + 1) * GTES_PER_GT as usize];
        if table.iter().all(|s| *s == 0) {
            continue;
        }
        out.marker(4, MARKER_GT)?;
        *entry = out.sector as u32;
        let bytes: Vec<u8> = table.iter().flat_map(|s| s.to_le_bytes()).collect();
        out.write_padded(&bytes)?;
    }
    let gd_sectors = (num_gts * 4).div_ceil(SECTOR);
    out.marker(gd_sectors, MARKER_GD)?;
    let gd_at = out.sector;
    let bytes: Vec<u8> = gd.iter().flat_map(|s| s.to_le_bytes()).collect();
    out.write_padded(&bytes)?;
    out.marker(1, MARKER_FOOTER)?;
    let mut footer = header;
    footer.gd_offset = gd_at;
    out.write_padded(&footer.to_bytes())?;
    out.write_padded(&[0u8; 512])?;
    out.w.flush()?;
    Ok(StreamStats {
        grains,
        bytes: out.sector * SECTOR,
    })
}
