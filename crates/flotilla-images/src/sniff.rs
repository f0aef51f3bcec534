//! Format detection from magic bytes (never from `Content-Type`) and dimensions from the header,
//! so limits are enforced before a single pixel is decoded.

use crate::error::ImageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Jpeg,
    Png,
    Gif,
    Webp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Jpeg => "jpeg",
            Kind::Png => "png",
            Kind::Gif => "gif",
            Kind::Webp => "webp",
        }
    }
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: Kind,
    pub width: u32,
    pub height: u32,
    /// EXIF orientation, 1..=8 (1 when absent).
    pub orientation: u8,
}

/// Reads format and dimensions without decoding pixels.
pub fn probe(src: &[u8]) -> Result<Probe, ImageError> {
    let (kind, width, height, orientation) = if src.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let (w, h, o) = jpeg(src)?;
        (Kind::Jpeg, w, h, o)
    } else if src.starts_with(b"\x89PNG\r\n\x1a\n") {
        let (w, h) = png(src)?;
        (Kind::Png, w, h, 1)
    } else if src.starts_with(b"GIF87a") || src.starts_with(b"GIF89a") {
        let (w, h) = gif(src)?;
        (Kind::Gif, w, h, 1)
    } else if src.len() >= 12 && &src[0..4] == b"RIFF" && &src[8..12] == b"WEBP" {
        let (w, h) = webp(src)?;
        (Kind::Webp, w, h, 1)
    } else if src.len() >= 12 && &src[4..8] == b"ftyp" {
        let brand = String::from_utf8_lossy(&src[8..12]).into_owned();
        return Err(ImageError::Unsupported(format!(
            "ISO-BMFF image (brand {brand:?}); AVIF/HEIF sources are not decoded"
        )));
    } else {
        return Err(ImageError::Unsupported("not a JPEG, PNG, GIF or WebP file".into()));
    };
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!("header gives {width}x{height}")));
    }
    Ok(Probe { kind, width, height, orientation })
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn truncated() -> ImageError {
    ImageError::Corrupt("the header is truncated".into())
}

/// Walks the JPEG segments up to the first SOFn, picking up EXIF orientation on the way.
fn jpeg(b: &[u8]) -> Result<(u32, u32, u8), ImageError> {
    let mut at = 2;
    let mut orientation = 1;
    loop {
        // Markers may be padded with any number of 0xFF bytes.
        while b.get(at) == Some(&0xFF) && b.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if b.get(at) != Some(&0xFF) {
            return Err(if at >= b.len() { truncated() } else { ImageError::Corrupt("bad JPEG marker".into()) });
        }
        let marker = *b.get(at + 1).ok_or_else(truncated)?;
        at += 2;
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            continue; // standalone markers carry no length
        }
        if marker == 0xD9 || marker == 0xDA {
            return Err(ImageError::Corrupt("no frame header before the image data".into()));
        }
        let len = usize::from(be16(b, at).ok_or_else(truncated)?);
        if len < 2 {
            return Err(ImageError::Corrupt("bad JPEG segment length".into()));
        }
        let seg = b.get(at + 2..at + len).ok_or_else(truncated)?;
        match marker {
            0xE1 if seg.starts_with(b"Exif\0\0") => orientation = exif_orientation(&seg[6..]).unwrap_or(1),
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let h = u32::from(be16(seg, 1).ok_or_else(truncated)?);
                let w = u32::from(be16(seg, 3).ok_or_else(truncated)?);
                if h == 0 {
                    return Err(ImageError::Unsupported("JPEG with the height in a DNL marker".into()));
                }
                return Ok((w, h, orientation));
            }
            _ => {}
        }
        at += len;
    }
}

/// Tag 0x0112 of IFD0 in a TIFF-structured EXIF block.
pub(crate) fn exif_orientation(tiff: &[u8]) -> Option<u8> {
    let le = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = [*tiff.get(at)?, *tiff.get(at + 1)?];
        Some(if le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at + 4)?.try_into().ok()?;
        Some(if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let ifd = u32_at(4)? as usize;
    let count = usize::from(u16_at(ifd)?);
    (0..count.min(512))
        .find_map(|i| {
            let e = ifd + 2 + i * 12;
            (u16_at(e)? == 0x0112 && u16_at(e + 2)? == 3).then(|| u16_at(e + 8)).flatten()
        })
        .and_then(|v| u8::try_from(v).ok())
        .filter(|v| (1..=8).contains(v))
}

fn png(b: &[u8]) -> Result<(u32, u32), ImageError> {
    if b.get(12..16) != Some(b"IHDR") {
        return Err(if b.len() < 16 { truncated() } else { ImageError::Corrupt("PNG without IHDR".into()) });
    }
    Ok((be32(b, 16).ok_or_else(truncated)?, be32(b, 20).ok_or_else(truncated)?))
}

fn gif(b: &[u8]) -> Result<(u32, u32), ImageError> {
    let w = u16::from_le_bytes([*b.get(6).ok_or_else(truncated)?, *b.get(7).ok_or_else(truncated)?]);
    let h = u16::from_le_bytes([*b.get(8).ok_or_else(truncated)?, *b.get(9).ok_or_else(truncated)?]);
    Ok((u32::from(w), u32::from(h)))
}

fn webp(b: &[u8]) -> Result<(u32, u32), ImageError> {
    let mut features = std::mem::MaybeUninit::<libwebp_sys::WebPBitstreamFeatures>::zeroed();
    // SAFETY: libwebp reads at most `b.len()` bytes and fills `features` on success.
    let status = unsafe { libwebp_sys::WebPGetFeatures(b.as_ptr(), b.len(), features.as_mut_ptr()) };
    if status != libwebp_sys::VP8StatusCode::VP8_STATUS_OK {
        return Err(ImageError::Corrupt(format!("WebP header: {status:?}")));
    }
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let f = unsafe { features.assume_init() };
    if f.has_animation != 0 {
        return Err(ImageError::Unsupported("animated WebP".into()));
    }
    Ok((f.width.max(0) as u32, f.height.max(0) as u32))
}
