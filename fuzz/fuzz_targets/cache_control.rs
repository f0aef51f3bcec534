//! Cache-Control / CDN-Cache-Control directives and Range headers: arbitrary values never panic,
//! and satisfiable ranges always lie inside the representation.
#![no_main]
use flotilla_cache::range::{self, Ranges};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = flotilla_cache::CacheControl::parse(text);
    let len = (data.len() as u64).wrapping_mul(37) % 100_000;
    if let Ranges::Satisfiable(parts) = range::parse(text, len) {
        assert!(!parts.is_empty() && parts.len() <= 16);
        let mut last_end = None;
        for (a, b) in parts {
            assert!(a <= b && b < len, "{a}-{b} of {len}");
            if let Some(prev) = last_end {
                assert!(a > prev, "ranges overlap after merging");
            }
            last_end = Some(b);
        }
    }
});
