//! Resampling with `fast_image_resize` (SIMD convolution): Lanczos3, like libvips' reduce.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::error::ImageError;
use crate::geometry::Plan;
use crate::pixels::Pixels;

/// Crops and resizes `src` as `plan` says. The plan is in full-source pixels; `src` may be
/// smaller (JPEG shrink-on-load), so the crop is scaled to it first.
pub(crate) fn resize(src: Pixels, plan: &Plan, source_width: u32) -> Result<Pixels, ImageError> {
    let k = f64::from(src.width) / f64::from(source_width);
    let (x, y, w, h) = plan.crop;
    let crop = (x * k, y * k, (w * k).min(f64::from(src.width)), (h * k).min(f64::from(src.height)));
    let whole = crop.0 == 0.0 && crop.1 == 0.0 && crop.2 == f64::from(src.width) && crop.3 == f64::from(src.height);
    if whole && src.width == plan.width && src.height == plan.height {
        return Ok(src);
    }
    let pixel_type = if src.channels == 4 { PixelType::U8x4 } else { PixelType::U8x3 };
    let channels = src.channels;
    let from = Image::from_vec_u8(src.width, src.height, src.data, pixel_type)
        .map_err(|e| ImageError::Internal(format!("resize source: {e}")))?;
    let mut to = Image::new(plan.width, plan.height, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .crop(crop.0, crop.1, crop.2, crop.3);
    Resizer::new().resize(&from, &mut to, &options).map_err(|e| ImageError::Internal(format!("resize: {e}")))?;
    Ok(Pixels { width: plan.width, height: plan.height, channels, data: to.into_vec() })
}
