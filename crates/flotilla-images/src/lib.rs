//! Image variants for the edge: sniff → check limits from the header → decode (JPEG shrunk on
//! load, as libvips does) → resize (Lanczos3, SIMD) → apply EXIF orientation → encode.
//!
//! Everything here is synchronous, CPU-bound and panic-contained: the edge runs [`transform`] on
//! its bounded image pool, never on the async runtime. Every failure is an [`ImageError`] that
//! names an HTTP status, so bad input is a 4xx/422 and never a crash.

mod decode;
mod encode;
mod error;
mod geometry;
mod orient;
mod pixels;
mod resize;
mod sniff;
pub mod url;

pub use error::ImageError;
pub use flotilla_config::{Fit, ImageFormat};
pub use geometry::Target;
pub use sniff::{probe, Kind, Probe};

/// What to make of one source image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub target: Target,
    pub format: ImageFormat,
    /// 1..=100.
    pub quality: u8,
    /// rav1e speed for AVIF, 1..=10.
    pub avif_speed: u8,
}

/// Bounds checked before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_pixels: u64,
    pub max_bytes: u64,
}

/// An encoded variant.
#[derive(Debug, Clone)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// The source as probed (format, dimensions).
    pub source: Probe,
}

/// Makes one variant. Panics inside codecs (libjpeg reports errors by unwinding) are caught and
/// reported as a corrupt image, so one bad file can never take the process down.
pub fn transform(src: &[u8], spec: &Spec, limits: &Limits) -> Result<Output, ImageError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| transform_inner(src, spec, limits))) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("decoder failed");
            Err(ImageError::Corrupt(msg.trim_start_matches("libjpeg fatal error: ").to_string()))
        }
    }
}

fn transform_inner(src: &[u8], spec: &Spec, limits: &Limits) -> Result<Output, ImageError> {
    if src.len() as u64 > limits.max_bytes {
        return Err(ImageError::TooLarge(format!("source is {} bytes, the limit is {}", src.len(), limits.max_bytes)));
    }
    let probe = sniff::probe(src)?;
    let pixels = u64::from(probe.width) * u64::from(probe.height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge(format!(
            "source is {}x{} ({pixels} pixels), the limit is {}",
            probe.width, probe.height, limits.max_pixels
        )));
    }
    // Plan in the decoded (unrotated) frame: a rotated source swaps the box's sides.
    let transposed = orient::transposes(probe.orientation);
    let target = if transposed { spec.target.transposed() } else { spec.target };
    let plan = geometry::plan(probe.width, probe.height, &target);
    let decoded = decode::decode(src, &probe, plan.shrink())?;
    let resized = resize::resize(decoded.pixels, &plan, probe.width)?;
    let mut image = orient::apply(resized, probe.orientation);
    if spec.format == ImageFormat::Jpeg {
        image = image.flatten();
    } else {
        image = image.drop_opaque_alpha();
    }
    let (width, height) = (image.width, image.height);
    let bytes = encode::encode(&image, spec, decoded.icc.as_deref())?;
    Ok(Output { bytes, format: spec.format, width, height, source: probe })
}

#[cfg(test)]
mod tests;
