//! Encoders: mozjpeg (trellis quantisation, optimised Huffman, progressive) for JPEG, libwebp for
//! WebP, rav1e (through ravif) for AVIF. Metadata is stripped; the ICC profile is kept for JPEG
//! and WebP (AVIF output is sRGB-tagged by ravif; a source profile is dropped there).

use flotilla_config::ImageFormat;

use crate::error::ImageError;
use crate::pixels::Pixels;
use crate::Spec;

pub(crate) fn encode(img: &Pixels, spec: &Spec, icc: Option<&[u8]>) -> Result<Vec<u8>, ImageError> {
    match spec.format {
        ImageFormat::Jpeg => jpeg(img, spec.quality, icc),
        ImageFormat::Webp => webp(img, spec.quality, icc),
        ImageFormat::Avif => avif(img, spec.quality, spec.avif_speed),
    }
}

fn jpeg(img: &Pixels, quality: u8, icc: Option<&[u8]>) -> Result<Vec<u8>, ImageError> {
    let internal = |e: std::io::Error| ImageError::Internal(format!("JPEG encoder: {e}"));
    if img.channels != 3 {
        return Err(ImageError::Internal("JPEG encoder needs RGB".into()));
    }
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_size(img.width as usize, img.height as usize);
    c.set_quality(f32::from(quality));
    let mut started = c.start_compress(Vec::with_capacity(img.data.len() / 8)).map_err(internal)?;
    if let Some(profile) = icc {
        started.write_icc_profile(profile);
    }
    started.write_scanlines(&img.data).map_err(internal)?;
    started.finish().map_err(internal)
}

fn webp(img: &Pixels, quality: u8, icc: Option<&[u8]>) -> Result<Vec<u8>, ImageError> {
    let (w, h) = (img.width as i32, img.height as i32);
    let stride = w * i32::from(img.channels);
    let mut out: *mut u8 = std::ptr::null_mut();
    let q = f32::from(quality);
    // SAFETY: `data` holds height × stride bytes; libwebp allocates `out`, which we free below.
    let len = unsafe {
        if img.channels == 4 {
            libwebp_sys::WebPEncodeRGBA(img.data.as_ptr(), w, h, stride, q, &mut out)
        } else {
            libwebp_sys::WebPEncodeRGB(img.data.as_ptr(), w, h, stride, q, &mut out)
        }
    };
    if out.is_null() || len == 0 {
        return Err(ImageError::Internal("WebP encoder failed".into()));
    }
    // SAFETY: libwebp returned `len` valid bytes at `out`.
    let bytes = unsafe { std::slice::from_raw_parts(out, len) }.to_vec();
    // SAFETY: `out` came from libwebp's allocator and is freed exactly once.
    unsafe { libwebp_sys::WebPFree(out.cast()) };
    Ok(match icc {
        Some(profile) => with_icc(&bytes, profile, img.width, img.height, img.channels == 4).unwrap_or(bytes),
        None => bytes,
    })
}

/// Wraps a simple-format WebP (`RIFF WEBP VP8 /VP8L/ALPH…`) in the extended format with an
/// `ICCP` chunk (the WebP container spec's VP8X layout). `None` if the input is not as expected.
fn with_icc(simple: &[u8], icc: &[u8], width: u32, height: u32, alpha: bool) -> Option<Vec<u8>> {
    if simple.len() < 12 || &simple[0..4] != b"RIFF" || &simple[8..12] != b"WEBP" || &simple[12..16] == b"VP8X" {
        return None;
    }
    let body = &simple[12..];
    let icc_chunk_len = 8 + icc.len() + (icc.len() & 1);
    let mut out = Vec::with_capacity(12 + 18 + icc_chunk_len + body.len());
    out.extend_from_slice(b"RIFF");
    let riff_len = 4 + 18 + icc_chunk_len + body.len();
    out.extend_from_slice(&u32::try_from(riff_len).ok()?.to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(b"VP8X");
    out.extend_from_slice(&10u32.to_le_bytes());
    let flags: u8 = 0x20 | if alpha { 0x10 } else { 0 };
    out.extend_from_slice(&[flags, 0, 0, 0]);
    out.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    out.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    out.extend_from_slice(b"ICCP");
    out.extend_from_slice(&u32::try_from(icc.len()).ok()?.to_le_bytes());
    out.extend_from_slice(icc);
    if icc.len() & 1 == 1 {
        out.push(0);
    }
    out.extend_from_slice(body);
    Some(out)
}

fn avif(img: &Pixels, quality: u8, speed: u8) -> Result<Vec<u8>, ImageError> {
    use ravif::{Encoder, Img, RGB8, RGBA8};
    let enc = Encoder::new().with_quality(f32::from(quality)).with_speed(speed).with_num_threads(Some(1));
    let (w, h) = (img.width as usize, img.height as usize);
    let result = if img.channels == 4 {
        let px: Vec<RGBA8> = img.data.chunks_exact(4).map(|p| RGBA8::new(p[0], p[1], p[2], p[3])).collect();
        enc.encode_rgba(Img::new(&px[..], w, h))
    } else {
        let px: Vec<RGB8> = img.data.chunks_exact(3).map(|p| RGB8::new(p[0], p[1], p[2])).collect();
        enc.encode_rgb(Img::new(&px[..], w, h))
    };
    result.map(|e| e.avif_file).map_err(|e| ImageError::Internal(format!("AVIF encoder: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icc_is_wrapped_in_vp8x() {
        let img = Pixels { width: 2, height: 2, channels: 3, data: vec![128; 12] };
        let plain = webp(&img, 80, None).unwrap();
        let tagged = webp(&img, 80, Some(b"fake-profile!")).unwrap();
        assert_eq!(&tagged[12..16], b"VP8X");
        assert_eq!(&tagged[30..34], b"ICCP");
        let riff = u32::from_le_bytes(tagged[4..8].try_into().unwrap()) as usize;
        assert_eq!(riff + 8, tagged.len());
        assert!(tagged.len() > plain.len());
        // libwebp itself must accept the result.
        let p = crate::sniff::probe(&tagged).unwrap();
        assert_eq!((p.width, p.height), (2, 2));
    }
}
