//! `[images]`: on-the-fly image variants served by the edge.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// An output format, in the order the config prefers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageFormat {
    Avif,
    Webp,
    Jpeg,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Avif => "avif",
            ImageFormat::Webp => "webp",
            ImageFormat::Jpeg => "jpeg",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Avif => "image/avif",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "avif" => Some(ImageFormat::Avif),
            "webp" => Some(ImageFormat::Webp),
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            _ => None,
        }
    }
}

/// How a picture is fitted into a box that has both a width and a height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fit {
    /// Scale to fit inside the box, keeping the aspect ratio (the default).
    #[default]
    Contain,
    /// Scale to cover the box, then crop the centre.
    Cover,
    /// Stretch to exactly the box.
    Fill,
}

impl Fit {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "contain" => Some(Fit::Contain),
            "cover" => Some(Fit::Cover),
            "fill" => Some(Fit::Fill),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fit::Contain => "contain",
            Fit::Cover => "cover",
            Fit::Fill => "fill",
        }
    }
}

/// A named size (`[images.presets]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePreset {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    /// Overrides `[images].quality` for every format.
    pub quality: Option<u8>,
    /// Allow output larger than the source (off by default).
    pub upscale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageQuality {
    pub jpeg: u8,
    pub webp: u8,
    pub avif: u8,
}

impl Default for ImageQuality {
    fn default() -> Self {
        ImageQuality { jpeg: 82, webp: 80, avif: 60 }
    }
}

/// Where originals come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A target group, asked with GET for the path after the preset.
    TargetGroup(String),
    /// A directory on this machine (`files:DIR`, relative to the config file).
    Files(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImagesConfig {
    /// URL prefix, e.g. `/_img`; requests are `{route}/{preset}/{path}`.
    pub route: String,
    pub source: ImageSource,
    pub formats: Vec<ImageFormat>,
    pub quality: ImageQuality,
    pub max_source_pixels: u64,
    pub max_source_bytes: u64,
    /// When set, ad-hoc sizes need `?s=` with the URL's HMAC-SHA256.
    pub signing_key: Option<String>,
    pub presets: BTreeMap<String, ImagePreset>,
    /// Transforms running at once (0 = one per CPU); more wait in a bounded queue.
    pub workers: usize,
    /// Requests that may wait for a worker before new ones get 503.
    pub queue: usize,
    /// rav1e speed, 1 (slow, small) … 10 (fast).
    pub avif_speed: u8,
    /// How long a variant stays fresh when the original says nothing about freshness.
    pub ttl: Duration,
    /// The whole fetch of an original (response head and body): a stalled origin never holds
    /// an image worker longer than this.
    pub source_timeout: Duration,
    /// The `Host` originals are asked for with (a target group source). Variants are shared by
    /// every host the edge answers, so the original must not depend on the client's `Host`.
    /// `None`: the source group's first configured target address, else `localhost`.
    pub source_host: Option<String>,
}

impl ImagesConfig {
    /// The seeds' four sizes, used when `[images.presets]` is omitted.
    pub fn default_presets() -> BTreeMap<String, ImagePreset> {
        let p = |w: u32, h: Option<u32>, fit: Fit| ImagePreset {
            width: Some(w),
            height: h,
            fit,
            quality: None,
            upscale: false,
        };
        BTreeMap::from([
            ("thumbnail".to_string(), p(150, Some(150), Fit::Cover)),
            ("small".to_string(), p(320, None, Fit::Contain)),
            ("medium".to_string(), p(768, None, Fit::Contain)),
            ("large".to_string(), p(1440, None, Fit::Contain)),
        ])
    }
}
