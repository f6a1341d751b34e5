//! Any bytes as a layer: the ingest parser and checks must return a TOC or an error, never
//! panic, loop or allocate without bound.
#![no_main]

use imagestore_core::layer::ingest::{toc_of_slice, IngestLimits};
use imagestore_core::layer::validate::EmptyView;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = IngestLimits { max_uncompressed: 64 << 20, ratio_floor: 1 << 20, max_ratio: 200, ..IngestLimits::default() };
    if let Ok(toc) = toc_of_slice(data, &EmptyView, limits) {
        // Whatever was accepted must round-trip through the stored TOC form.
        let bytes = toc.to_bytes().expect("encode an accepted TOC");
        let back = imagestore_core::layer::toc::Toc::from_bytes(&bytes, "fuzz").expect("decode our own TOC");
        assert_eq!(back, toc);
    }
});
