//! Decoders to 8-bit RGB/RGBA. JPEG is shrunk during decoding by 2, 4 or 8 (the IDCT scaling
//! libjpeg offers), which is most of why libvips is fast; we use the same rule it does.

use std::io::Cursor;

use crate::error::ImageError;
use crate::pixels::Pixels;
use crate::sniff::{Kind, Probe};

pub(crate) struct Decoded {
    pub pixels: Pixels,
    pub icc: Option<Vec<u8>>,
}

/// Decodes `src` (already probed and within limits). `shrink` is how much smaller than the
/// source the output will be; JPEG uses it to decode at 1/2, 1/4 or 1/8 scale.
pub(crate) fn decode(src: &[u8], probe: &Probe, shrink: f64) -> Result<Decoded, ImageError> {
    match probe.kind {
        Kind::Jpeg => jpeg(src, jpeg_shrink(shrink)),
        Kind::Png => png(src, probe),
        Kind::Gif => gif(src, probe),
        Kind::Webp => webp(src, probe),
    }
}

/// libvips' rule (`vips_thumbnail_find_jpegshrink`): block-shrink on load to no less than twice
/// the target, and leave the rest to the Lanczos filter, which keeps the result sharp but clean.
pub(crate) fn jpeg_shrink(shrink: f64) -> u8 {
    if shrink >= 16.0 {
        8
    } else if shrink >= 8.0 {
        4
    } else if shrink >= 4.0 {
        2
    } else {
        1
    }
}

fn jpeg(src: &[u8], shrink: u8) -> Result<Decoded, ImageError> {
    use mozjpeg::{ColorSpace, Decompress, Marker};
    let mut d = Decompress::builder()
        .with_err(strict_errors())
        .with_markers(&[Marker::APP(2)])
        .from_mem(src)
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let icc = jpeg_icc(d.markers().filter(|m| m.marker == Marker::APP(2)).map(|m| m.data));
    if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
        return Err(ImageError::Unsupported("CMYK JPEG".into()));
    }
    d.scale(8 / shrink);
    let mut started = d.rgb().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (width, height) = (started.width() as u32, started.height() as u32);
    let data = started.read_scanlines::<u8>().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    // Trailing garbage after the image is not our concern; a short image is (strict_errors).
    let _ = started.finish();
    Ok(Decoded { pixels: Pixels { width, height, channels: 3, data }, icc })
}

/// libjpeg's error manager, with "premature end of data" promoted from a warning (libjpeg would
/// pad the picture with grey) to an error: a truncated upload must be refused, not resized.
fn strict_errors() -> mozjpeg_sys::jpeg_error_mgr {
    // SAFETY: an all-zero jpeg_error_mgr is what jpeg_std_error expects to initialise.
    let mut err: mozjpeg_sys::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: `err` is a valid, exclusively borrowed struct.
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

fn message(cinfo: &mut mozjpeg_sys::jpeg_common_struct) -> String {
    let mut buf = [0u8; 80];
    // SAFETY: `err` was set by libjpeg to our manager; format_message writes at most 80 bytes.
    unsafe {
        if let Some(err) = cinfo.err.as_ref() {
            if let Some(fmt) = err.format_message {
                let f: unsafe extern "C-unwind" fn(&mut mozjpeg_sys::jpeg_common_struct, &mut [u8; 80]) =
                    std::mem::transmute(fmt);
                f(cinfo, &mut buf);
            }
        }
    }
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

extern "C-unwind" fn error_exit(cinfo: &mut mozjpeg_sys::jpeg_common_struct) {
    let msg = message(cinfo);
    std::panic::resume_unwind(Box::new(msg));
}

extern "C-unwind" fn emit_message(cinfo: &mut mozjpeg_sys::jpeg_common_struct, level: std::os::raw::c_int) {
    // SAFETY: libjpeg always calls us with `err` pointing at our manager.
    let code = unsafe { cinfo.err.as_ref().map(|e| e.msg_code) };
    if level < 0 && code == Some(mozjpeg_sys::JWRN_JPEG_EOF as std::os::raw::c_int) {
        std::panic::resume_unwind(Box::new(String::from("the image data ends early (truncated file)")));
    }
}

/// Reassembles an ICC profile split across APP2 `ICC_PROFILE` chunks (ICC.1 B.4).
fn jpeg_icc<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut parts: Vec<(u8, &[u8])> =
        chunks.filter(|d| d.len() > 14 && d.starts_with(b"ICC_PROFILE\0")).map(|d| (d[12], &d[14..])).collect();
    if parts.is_empty() {
        return None;
    }
    parts.sort_by_key(|p| p.0);
    Some(parts.into_iter().flat_map(|p| p.1.iter().copied()).collect())
}

fn png(src: &[u8], probe: &Probe) -> Result<Decoded, ImageError> {
    use png::{ColorType, Transformations};
    let corrupt = |e: png::DecodingError| ImageError::Corrupt(format!("PNG: {e}"));
    let mut dec = png::Decoder::new_with_limits(
        Cursor::new(src),
        // Room for the whole 16-bit RGBA frame and nothing much more: the header was checked.
        png::Limits { bytes: (u64::from(probe.width) * u64::from(probe.height) * 8 + (1 << 20)) as usize },
    );
    dec.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(corrupt)?;
    let icc = reader.info().icc_profile.as_ref().map(|p| p.to_vec());
    let size = reader.output_buffer_size().ok_or_else(|| ImageError::TooLarge("PNG frame size overflows".into()))?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(corrupt)?;
    buf.truncate(frame.buffer_size());
    let (width, height) = (frame.width, frame.height);
    let pixels = match frame.color_type {
        ColorType::Rgb => Pixels { width, height, channels: 3, data: buf },
        ColorType::Rgba => Pixels { width, height, channels: 4, data: buf },
        ColorType::Grayscale => {
            Pixels { width, height, channels: 3, data: buf.iter().flat_map(|&g| [g, g, g]).collect() }
        }
        ColorType::GrayscaleAlpha => Pixels {
            width,
            height,
            channels: 4,
            data: buf.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect(),
        },
        ColorType::Indexed => return Err(ImageError::Corrupt("PNG palette was not expanded".into())),
    };
    Ok(Decoded { pixels, icc })
}

fn gif(src: &[u8], probe: &Probe) -> Result<Decoded, ImageError> {
    let corrupt = |e: gif::DecodingError| ImageError::Corrupt(format!("GIF: {e}"));
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    // Bound what one frame may allocate by the canvas the header declared (already checked).
    let canvas_bytes = u64::from(probe.width) * u64::from(probe.height) * 4;
    opts.set_memory_limit(gif::MemoryLimit::Bytes(std::num::NonZeroU64::MIN.saturating_add(canvas_bytes)));
    let mut dec = opts.read_info(Cursor::new(src)).map_err(corrupt)?;
    let (cw, ch) = (u32::from(dec.width()), u32::from(dec.height()));
    // Only the first frame: an animation's length costs nothing.
    let frame =
        dec.read_next_frame().map_err(corrupt)?.ok_or_else(|| ImageError::Corrupt("GIF has no frames".into()))?;
    let (fx, fy, fw, fh) =
        (u32::from(frame.left), u32::from(frame.top), u32::from(frame.width), u32::from(frame.height));
    let mut data = vec![0u8; canvas_bytes as usize];
    for row in 0..fh {
        let y = fy + row;
        if y >= ch {
            break;
        }
        for col in 0..fw {
            let x = fx + col;
            if x >= cw {
                break;
            }
            let s = ((row * fw + col) * 4) as usize;
            let d = ((y * cw + x) * 4) as usize;
            if let (Some(px), Some(out)) = (frame.buffer.get(s..s + 4), data.get_mut(d..d + 4)) {
                out.copy_from_slice(px);
            }
        }
    }
    Ok(Decoded { pixels: Pixels { width: cw, height: ch, channels: 4, data }, icc: None })
}

fn webp(src: &[u8], probe: &Probe) -> Result<Decoded, ImageError> {
    let (w, h) = (probe.width, probe.height);
    let stride = w as usize * 4;
    let mut data = vec![0u8; stride * h as usize];
    // SAFETY: the output buffer is exactly stride × height bytes, as we tell libwebp.
    let out = unsafe {
        libwebp_sys::WebPDecodeRGBAInto(src.as_ptr(), src.len(), data.as_mut_ptr(), data.len(), stride as i32)
    };
    if out.is_null() {
        return Err(ImageError::Corrupt("WebP data could not be decoded".into()));
    }
    Ok(Decoded { pixels: Pixels { width: w, height: h, channels: 4, data }, icc: None })
}
