//! The signed-URL verifier: a URL signed with the key is never refused as unsigned, and the
//! same signature on any other options or path is never accepted.
#![no_main]
use flotilla_images::url::{self, UrlError};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzzing-signing-key";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some((options, path)) = text.split_once('/') else { return };
    if options.contains(['?', '&', '#']) || path.contains(['?', '&', '#']) {
        return;
    }
    let path = format!("/{path}");
    let presets = flotilla_config::ImagesConfig::default_presets();
    let sig = url::sign(KEY, options, &path);
    let good = url::parse(&format!("/{options}{path}"), Some(&format!("s={sig}")), &presets, Some(KEY));
    assert_ne!(good, Err(UrlError::Unsigned), "a correctly signed URL was refused: {options}{path}");
    // The same signature with one more character of options: refused or not ad-hoc at all.
    let tampered = format!("/{options}0{path}");
    if let Ok(url::ImageUrl::Variant { variant: url::Variant::Adhoc(_), .. }) =
        url::parse(&tampered, Some(&format!("s={sig}")), &presets, Some(KEY))
    {
        panic!("a tampered URL was accepted: {tampered}");
    }
});
