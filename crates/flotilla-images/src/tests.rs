//! Transforms of the real photos in `../shared/corpus/images` and of files crafted from them.

use std::path::PathBuf;

use super::*;

pub(crate) fn corpus(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/images");
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("corpus image {name}: {e}"))
}

const LIMITS: Limits = Limits { max_pixels: 50_000_000, max_bytes: 30 << 20 };

fn spec(width: Option<u32>, height: Option<u32>, fit: Fit, format: ImageFormat) -> Spec {
    Spec { target: Target { width, height, fit, upscale: false }, format, quality: 80, avif_speed: 10 }
}

#[test]
fn large_jpeg_to_small_webp_and_jpeg() {
    let src = corpus("16_lomiri_Kleiber_6028x3391.jpg");
    for format in [ImageFormat::Webp, ImageFormat::Jpeg] {
        let out = transform(&src, &spec(Some(320), None, Fit::Contain, format), &LIMITS).unwrap();
        assert_eq!((out.width, out.height), (320, 180));
        assert_eq!((out.source.width, out.source.height), (6028, 3391));
        let back = probe(&out.bytes).unwrap();
        assert_eq!((back.width, back.height), (320, 180), "{format:?}");
        assert!(out.bytes.len() < 40_000, "{format:?}: {} bytes", out.bytes.len());
    }
}

#[test]
fn png_with_cover_crop_and_avif() {
    let src = corpus("01_skimage_chelsea_451x300.png");
    let out = transform(&src, &spec(Some(150), Some(150), Fit::Cover, ImageFormat::Webp), &LIMITS).unwrap();
    assert_eq!((out.width, out.height), (150, 150));
    assert_eq!(out.source.kind, Kind::Png);
    let avif = transform(&src, &spec(Some(100), None, Fit::Contain, ImageFormat::Avif), &LIMITS).unwrap();
    assert_eq!(&avif.bytes[4..12], b"ftypavif");
    assert_eq!((avif.width, avif.height), (100, 67));
}

#[test]
fn jpeg_icc_profile_is_kept() {
    // 04 carries an ICC profile: both JPEG and WebP output keep it.
    let src = corpus("04_skimage_rocket_640x427.jpg");
    let jpeg = transform(&src, &spec(Some(200), None, Fit::Contain, ImageFormat::Jpeg), &LIMITS).unwrap();
    assert!(jpeg.bytes.windows(12).any(|w| w == b"ICC_PROFILE\0"));
    let webp = transform(&src, &spec(Some(200), None, Fit::Contain, ImageFormat::Webp), &LIMITS).unwrap();
    assert_eq!(&webp.bytes[12..16], b"VP8X");
    assert!(webp.bytes.windows(4).any(|w| w == b"ICCP"));
}

#[test]
fn exif_orientation_is_applied() {
    // 05 has EXIF orientation 1; set it to 6 (rotate 90° clockwise) in place.
    let mut src = corpus("05_skimage_hubble_1000x872.jpg");
    let tiff = src.windows(6).position(|w| w == b"Exif\0\0").unwrap() + 6;
    let at = src[tiff..].windows(2).position(|w| w == [0x12, 0x01] || w == [0x01, 0x12]).unwrap() + tiff;
    let little = &src[tiff..tiff + 2] == b"II";
    let value_at = at + 8;
    src[value_at..value_at + 2].copy_from_slice(&if little { 6u16.to_le_bytes() } else { 6u16.to_be_bytes() });
    assert_eq!(probe(&src).unwrap().orientation, 6);
    let out = transform(&src, &spec(Some(300), None, Fit::Contain, ImageFormat::Jpeg), &LIMITS).unwrap();
    // Displayed as 872×1000, so 300 wide is 344 high.
    assert_eq!((out.width, out.height), (300, 344));
}

#[test]
fn gif_first_frame() {
    // A 2-frame GIF made from a corpus photo's pixels (the corpus has no GIF).
    let png = corpus("02_skimage_coffee_600x400.png");
    let rgb = transform(&png, &spec(Some(60), None, Fit::Contain, ImageFormat::Jpeg), &LIMITS).unwrap();
    let decoded = decode::decode(&rgb.bytes, &probe(&rgb.bytes).unwrap(), 1.0).unwrap().pixels;
    let (w, h) = (decoded.width as u16, decoded.height as u16);
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i & 0xE0, (i << 3) & 0xE0, (i << 6) & 0xC0]).collect();
    let indices: Vec<u8> =
        decoded.data.chunks_exact(3).map(|p| (p[0] & 0xE0) | ((p[1] & 0xE0) >> 3) | (p[2] >> 6)).collect();
    let mut gif_bytes = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut gif_bytes, w, h, &palette).unwrap();
        for _ in 0..2 {
            enc.write_frame(&gif::Frame { width: w, height: h, buffer: indices.clone().into(), ..Default::default() })
                .unwrap();
        }
    }
    let out = transform(&gif_bytes, &spec(Some(30), None, Fit::Contain, ImageFormat::Webp), &LIMITS).unwrap();
    assert_eq!(out.source.kind, Kind::Gif);
    assert_eq!((out.width, out.height), (30, 20));
    // A GIF bomb: the same frames on a declared 65535×65535 canvas is refused from the header.
    let mut bomb = gif_bytes.clone();
    bomb[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert!(matches!(
        transform(&bomb, &spec(Some(30), None, Fit::Contain, ImageFormat::Webp), &LIMITS),
        Err(ImageError::TooLarge(_))
    ));
    // A frame larger than its canvas is clipped to the canvas, not trusted.
    let mut wide = gif_bytes.clone();
    wide[6..8].copy_from_slice(&10u16.to_le_bytes());
    let clipped = transform(&wide, &spec(None, None, Fit::Contain, ImageFormat::Jpeg), &LIMITS);
    assert!(
        matches!(&clipped, Ok(o) if o.width == 10) || matches!(clipped, Err(ImageError::Corrupt(_))),
        "{clipped:?}"
    );
}

#[test]
fn refusals() {
    let jpeg = corpus("08_mate_Storm_1920x1280.jpg");
    let s = spec(Some(320), None, Fit::Contain, ImageFormat::Webp);
    // Truncated: refused, not padded with grey.
    let cut = &jpeg[..jpeg.len() / 2];
    assert!(
        matches!(transform(cut, &s, &LIMITS), Err(ImageError::Corrupt(_))),
        "{:?}",
        transform(cut, &s, &LIMITS).err()
    );
    // Corrupt entropy data in the middle.
    let mut broken = jpeg.clone();
    let mid = broken.len() / 2;
    broken[mid..mid + 4096].fill(0xFF);
    assert!(transform(&broken, &s, &LIMITS).is_err());
    // Not an image at all, whatever the name says.
    assert!(matches!(
        transform(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>", &s, &LIMITS),
        Err(ImageError::Unsupported(_))
    ));
    // A PNG header claiming 100000×100000: refused from the header, nothing allocated.
    let mut bomb = corpus("01_skimage_chelsea_451x300.png");
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let e = transform(&bomb, &s, &LIMITS).unwrap_err();
    assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
    assert_eq!(e.status(), 422);
    // Over the byte limit.
    let small = Limits { max_pixels: 50_000_000, max_bytes: 1000 };
    assert!(matches!(transform(&jpeg, &s, &small), Err(ImageError::TooLarge(_))));
    // Within the pixel limit of a 20 MP photo? No: a 10 MP limit refuses it.
    let tight = Limits { max_pixels: 10_000_000, max_bytes: 30 << 20 };
    assert!(matches!(transform(&corpus("16_lomiri_Kleiber_6028x3391.jpg"), &s, &tight), Err(ImageError::TooLarge(_))));
    // A PNG whose data is cut short.
    let png = corpus("02_skimage_coffee_600x400.png");
    assert!(matches!(transform(&png[..png.len() / 3], &s, &LIMITS), Err(ImageError::Corrupt(_))));
}

#[test]
fn shrink_on_load_rule_matches_libvips() {
    assert_eq!(decode::jpeg_shrink(1.5), 1);
    assert_eq!(decode::jpeg_shrink(4.0), 2);
    assert_eq!(decode::jpeg_shrink(9.0), 4);
    assert_eq!(decode::jpeg_shrink(18.8), 8);
}
