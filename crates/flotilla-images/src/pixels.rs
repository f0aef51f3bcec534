//! An 8-bit RGB or RGBA raster, the one pixel format between decoders and encoders.

#[derive(Debug, Clone)]
pub(crate) struct Pixels {
    pub width: u32,
    pub height: u32,
    /// 3 (RGB) or 4 (RGBA, not premultiplied).
    pub channels: u8,
    pub data: Vec<u8>,
}

impl Pixels {
    /// RGBA → RGB when every pixel is opaque: smaller and faster to encode.
    pub fn drop_opaque_alpha(self) -> Pixels {
        if self.channels != 4 || self.data.chunks_exact(4).any(|p| p[3] != 255) {
            return self;
        }
        self.into_rgb(|rgb, _| rgb)
    }

    /// RGBA → RGB over a white background, for formats without alpha (JPEG).
    pub fn flatten(self) -> Pixels {
        if self.channels != 4 {
            return self;
        }
        self.into_rgb(|c, a| ((u32::from(c) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255) as u8)
    }

    fn into_rgb(self, f: impl Fn(u8, u8) -> u8) -> Pixels {
        let mut data = Vec::with_capacity(self.data.len() / 4 * 3);
        for p in self.data.chunks_exact(4) {
            data.extend_from_slice(&[f(p[0], p[3]), f(p[1], p[3]), f(p[2], p[3])]);
        }
        Pixels { width: self.width, height: self.height, channels: 3, data }
    }
}
