//! From a source size and a requested box to a crop rectangle and an output size.

use flotilla_config::Fit;

/// The requested box. A missing side follows the aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    /// Allow output larger than the source.
    pub upscale: bool,
}

impl Target {
    pub(crate) fn transposed(self) -> Target {
        Target { width: self.height, height: self.width, ..self }
    }
}

/// Which part of the source becomes the output, and how big the output is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Crop rectangle in source pixels (x, y, width, height).
    pub crop: (f64, f64, f64, f64),
    pub width: u32,
    pub height: u32,
}

impl Plan {
    /// How many times smaller than the crop the output is (the smaller of the two axes).
    pub fn shrink(&self) -> f64 {
        (self.crop.2 / f64::from(self.width)).min(self.crop.3 / f64::from(self.height))
    }
}

fn side(v: f64) -> u32 {
    (v.round() as u32).max(1)
}

pub(crate) fn plan(sw: u32, sh: u32, t: &Target) -> Plan {
    let (fw, fh) = (f64::from(sw), f64::from(sh));
    let full = (0.0, 0.0, fw, fh);
    let cap = |scale: f64| if t.upscale { scale } else { scale.min(1.0) };
    match (t.width, t.height) {
        (None, None) => Plan { crop: full, width: sw, height: sh },
        (Some(w), None) => {
            let s = cap(f64::from(w) / fw);
            Plan { crop: full, width: side(fw * s), height: side(fh * s) }
        }
        (None, Some(h)) => {
            let s = cap(f64::from(h) / fh);
            Plan { crop: full, width: side(fw * s), height: side(fh * s) }
        }
        (Some(w), Some(h)) => {
            let (bw, bh) = (f64::from(w), f64::from(h));
            match t.fit {
                Fit::Contain => {
                    let s = cap((bw / fw).min(bh / fh));
                    Plan { crop: full, width: side(fw * s), height: side(fh * s) }
                }
                Fit::Fill => {
                    let (ow, oh) = if t.upscale { (w, h) } else { (w.min(sw), h.min(sh)) };
                    Plan { crop: full, width: ow, height: oh }
                }
                Fit::Cover => {
                    let s = cap((bw / fw).max(bh / fh));
                    // The output is the box, or the part of it the unscaled source can fill.
                    let (ow, oh) = (bw.min(fw * s), bh.min(fh * s));
                    let (cw, ch) = (ow / s, oh / s);
                    Plan { crop: ((fw - cw) / 2.0, (fh - ch) / 2.0, cw, ch), width: side(ow), height: side(oh) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(width: Option<u32>, height: Option<u32>, fit: Fit) -> Target {
        Target { width, height, fit, upscale: false }
    }

    #[test]
    fn width_only_keeps_aspect() {
        let p = plan(6028, 3391, &t(Some(320), None, Fit::Contain));
        assert_eq!((p.width, p.height), (320, 180));
        assert!((p.shrink() - 6028.0 / 320.0).abs() < 0.1);
    }

    #[test]
    fn never_upscales_unless_asked() {
        let p = plan(451, 300, &t(Some(1440), None, Fit::Contain));
        assert_eq!((p.width, p.height), (451, 300));
        let up = plan(451, 300, &Target { upscale: true, ..t(Some(902), None, Fit::Contain) });
        assert_eq!((up.width, up.height), (902, 600));
    }

    #[test]
    fn cover_crops_the_centre() {
        let p = plan(2000, 1000, &t(Some(150), Some(150), Fit::Cover));
        assert_eq!((p.width, p.height), (150, 150));
        assert_eq!(p.crop, (500.0, 0.0, 1000.0, 1000.0));
        // A source smaller than the box: crop to the box's aspect without scaling up.
        let small = plan(100, 50, &t(Some(150), Some(150), Fit::Cover));
        assert_eq!((small.width, small.height), (100, 50));
    }

    #[test]
    fn contain_and_fill() {
        let c = plan(2000, 1000, &t(Some(300), Some(300), Fit::Contain));
        assert_eq!((c.width, c.height), (300, 150));
        let f = plan(2000, 1000, &t(Some(300), Some(300), Fit::Fill));
        assert_eq!((f.width, f.height), (300, 300));
    }
}
