//! Any bytes as a stored TOC or TOC index: decoding returns a value or `Error::Corrupt`, never
//! panics or allocates without bound; what decodes re-encodes to itself.
#![no_main]

use imagestore_core::layer::index::{build, IndexReader};
use imagestore_core::layer::toc::Toc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(toc) = Toc::from_bytes(data, "fuzz") {
        let again = Toc::from_bytes(&toc.to_bytes().expect("encode"), "fuzz").expect("decode");
        assert_eq!(again, toc);
        // The index of an accepted TOC answers for every path with exactly its entries.
        let idx = IndexReader::open(build(&toc).expect("index"), "fuzz").expect("open index");
        for (i, e) in toc.entries.iter().enumerate() {
            let found = idx.lookup(&e.path).expect("lookup");
            assert!(found.iter().any(|(p, f)| *p as usize == i && f == e), "{}", e.path);
        }
    }
    if let Ok(idx) = IndexReader::open(data.to_vec(), "fuzz") {
        let _ = idx.lookup("etc/passwd");
        let _ = idx.lookup("");
    }
});
