//! Image decoding of arbitrary bytes under tight limits: an image or a typed refusal, never a
//! crash (codec panics are caught by `transform`; anything else is a bug the fuzzer reports).
#![no_main]
use flotilla_images::{transform, Fit, ImageFormat, Limits, Spec, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let spec = Spec {
        target: Target { width: Some(32), height: Some(32), fit: Fit::Cover, upscale: false },
        format: ImageFormat::Webp,
        quality: 50,
        avif_speed: 10,
    };
    let limits = Limits { max_pixels: 1 << 20, max_bytes: 1 << 20 };
    if let Ok(out) = transform(data, &spec, &limits) {
        assert!(out.width <= 32 && out.height <= 32);
    }
});
