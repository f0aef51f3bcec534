//! The image URL grammar: any path and query give a parse or a typed error, and a parsed
//! source path never escapes (no `..`, NUL or backslash after decoding).
#![no_main]
use flotilla_images::url::{self, ImageUrl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let presets = flotilla_config::ImagesConfig::default_presets();
    let parsed = url::parse(path, query, &presets, Some(b"fuzzing-signing-key"));
    if let Ok(ImageUrl::Variant { path, .. } | ImageUrl::Srcset { path, .. }) = parsed {
        let decoded = url::percent_decode(&path).expect("a parsed path decodes");
        assert!(!decoded.split('/').any(|s| s == ".."), "{decoded}");
        assert!(!decoded.contains(['\0', '\\']), "{decoded}");
    }
    let _ = url::negotiate(Some(text), &[flotilla_config::ImageFormat::Avif, flotilla_config::ImageFormat::Webp]);
});
