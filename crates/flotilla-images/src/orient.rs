//! EXIF orientation (tag 0x0112), applied to the small output rather than the large source.

use crate::pixels::Pixels;

/// Orientations 5–8 swap width and height.
pub(crate) fn transposes(orientation: u8) -> bool {
    (5..=8).contains(&orientation)
}

/// Returns the picture as it should be seen: orientation 1 is a no-op.
pub(crate) fn apply(src: Pixels, orientation: u8) -> Pixels {
    if !(2..=8).contains(&orientation) {
        return src;
    }
    let (w, h) = (src.width as usize, src.height as usize);
    let n = usize::from(src.channels);
    let (ow, oh) = if transposes(orientation) { (h, w) } else { (w, h) };
    let mut data = vec![0u8; src.data.len()];
    for y in 0..h {
        for x in 0..w {
            // Where the stored pixel (x, y) lands in the displayed picture.
            let (dx, dy) = match orientation {
                2 => (w - 1 - x, y),
                3 => (w - 1 - x, h - 1 - y),
                4 => (x, h - 1 - y),
                5 => (y, x),
                6 => (h - 1 - y, x),
                7 => (h - 1 - y, w - 1 - x),
                _ => (y, w - 1 - x), // 8
            };
            let s = (y * w + x) * n;
            let d = (dy * ow + dx) * n;
            data[d..d + n].copy_from_slice(&src.data[s..s + n]);
        }
    }
    Pixels { width: ow as u32, height: oh as u32, channels: src.channels, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×1 picture, red then green, stored for each orientation.
    fn px(orientation: u8) -> Pixels {
        apply(Pixels { width: 2, height: 1, channels: 3, data: vec![255, 0, 0, 0, 255, 0] }, orientation)
    }

    #[test]
    fn orientations() {
        assert_eq!(px(1).data, vec![255, 0, 0, 0, 255, 0]);
        assert_eq!(px(2).data, vec![0, 255, 0, 255, 0, 0]);
        let r = px(6); // rotate 90° clockwise: red on top
        assert_eq!((r.width, r.height), (1, 2));
        assert_eq!(r.data, vec![255, 0, 0, 0, 255, 0]);
        let l = px(8); // rotate 90° counter-clockwise: green on top
        assert_eq!(l.data, vec![0, 255, 0, 255, 0, 0]);
    }
}
