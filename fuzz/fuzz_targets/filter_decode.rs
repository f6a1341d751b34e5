//! Any string as a FilterSpec wire form: decoding returns a spec or an error; a decoded spec
//! re-encodes to itself, and applying it to any path never panics or escapes the root.
#![no_main]

use imagestore_core::FilterSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (wire, path) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"etc/passwd"[..]),
    };
    let Ok(wire) = std::str::from_utf8(wire) else { return };
    if let Ok(f) = FilterSpec::decode(wire) {
        assert_eq!(FilterSpec::decode(&f.encode()).expect("re-decode"), f);
        if let Ok(p) = std::str::from_utf8(path) {
            if let Ok(Some(mapped)) = f.apply(p) {
                assert!(!mapped.starts_with('/') && !mapped.split('/').any(|c| c == ".."), "{mapped}");
            }
        }
    }
});
