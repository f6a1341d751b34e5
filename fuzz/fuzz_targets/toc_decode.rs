//! Any bytes as a stored TOC: decoding returns a TOC or `Error::Corrupt`, never panics.
#![no_main]

use imagestore_core::layer::toc::Toc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(toc) = Toc::from_bytes(data, "fuzz") {
        let again = Toc::from_bytes(&toc.to_bytes().expect("encode"), "fuzz").expect("decode");
        assert_eq!(again, toc);
    }
});
