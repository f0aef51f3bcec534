//! Raw → typed for `[images]`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::model::*;
use super::raw::{RawImages, RawPreset};
use crate::ctx::{valid_name, Ctx};
use crate::raw::S;
use crate::TargetGroupConfig;

const DEFAULT_MAX_PIXELS: i64 = 50_000_000;
/// A preset may not ask for more than this many pixels per side (the output is held in memory).
const MAX_SIDE: i64 = 8192;

pub(crate) fn images(
    cx: &mut Ctx<'_>,
    raw: &S<RawImages>,
    target_groups: &BTreeMap<String, TargetGroupConfig>,
) -> Option<ImagesConfig> {
    let r = raw.get_ref();
    let route = match &r.route {
        None => "/_img".to_string(),
        Some(v) => {
            let s = v.get_ref().trim_end_matches('/').to_string();
            if !s.starts_with('/') || s.len() < 2 || s.contains(['*', '?', '#', ' ']) {
                cx.err(v, format!("images.route {:?} must be a path like \"/_img\"", v.get_ref()));
            }
            s
        }
    };
    let source = match &r.source {
        None => {
            cx.err(raw, "images.source is required: a target group name or \"files:DIR\"");
            return None;
        }
        Some(v) => match v.get_ref().strip_prefix("files:") {
            Some("") => {
                cx.err(v, "images.source \"files:\" needs a directory after the colon");
                return None;
            }
            Some(dir) => {
                let path = cx.base_dir.join(dir);
                if !path.is_dir() {
                    cx.err(v, format!("images.source: {} is not a directory", path.display()));
                }
                ImageSource::Files(path)
            }
            None => {
                if !target_groups.contains_key(v.get_ref()) {
                    cx.err(v, format!("images.source: no target group named {:?}", v.get_ref()));
                }
                ImageSource::TargetGroup(v.get_ref().clone())
            }
        },
    };
    let formats = match &r.formats {
        None => vec![ImageFormat::Avif, ImageFormat::Webp, ImageFormat::Jpeg],
        Some(list) => {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for f in list.get_ref() {
                match ImageFormat::parse(f.get_ref()) {
                    Some(fmt) if seen.insert(fmt) => out.push(fmt),
                    Some(_) => cx.err(f, format!("images.formats lists {:?} twice", f.get_ref())),
                    None => cx.err(f, format!("images.formats: unknown format {:?} (avif, webp, jpeg)", f.get_ref())),
                }
            }
            if list.get_ref().is_empty() {
                cx.err(list, "images.formats must name at least one format");
            } else if !out.contains(&ImageFormat::Jpeg) {
                // Every client accepts JPEG; without it some clients could get nothing.
                cx.warnings.push("images.formats has no \"jpeg\": clients that accept neither AVIF nor WebP get the first listed format anyway".into());
            }
            out
        }
    };
    let d = ImageQuality::default();
    let quality = match &r.quality {
        None => d,
        Some(q) => {
            let q = q.get_ref();
            ImageQuality {
                jpeg: cx.int(&q.jpeg, "images.quality.jpeg", 1..=100, d.jpeg.into()) as u8,
                webp: cx.int(&q.webp, "images.quality.webp", 1..=100, d.webp.into()) as u8,
                avif: cx.int(&q.avif, "images.quality.avif", 1..=100, d.avif.into()) as u8,
            }
        }
    };
    let max_source_pixels =
        cx.int(&r.max_source_pixels, "images.max_source_pixels", 1..=1_000_000_000, DEFAULT_MAX_PIXELS) as u64;
    let max_source_bytes = cx.size(&r.max_source_bytes, "images.max_source_bytes", 30 << 20);
    if max_source_bytes == 0 {
        if let Some(v) = &r.max_source_bytes {
            cx.err(v, "images.max_source_bytes must be more than 0");
        }
    }
    let signing_key = r.signing_key.as_ref().map(|k| cx.expand(k, "images.signing_key")).filter(|k| !k.is_empty());
    if let (Some(k), Some(raw_key)) = (&signing_key, &r.signing_key) {
        if k.len() < 16 {
            cx.err(raw_key, "images.signing_key must be at least 16 characters");
        }
    }
    let presets = match &r.presets {
        None => ImagesConfig::default_presets(),
        Some(map) => {
            let mut out = BTreeMap::new();
            for (name, p) in map {
                if !valid_name(name.get_ref()) || name.get_ref() == "srcset" || name.get_ref().contains('=') {
                    cx.err(
                        name,
                        format!(
                            "images.presets: name {:?} must be letters, digits, '-' or '_' (and not \"srcset\")",
                            name.get_ref()
                        ),
                    );
                }
                if let Some(preset) = preset(cx, name.get_ref(), p) {
                    out.insert(name.get_ref().clone(), preset);
                }
            }
            out
        }
    };
    let workers = cx.int(&r.workers, "images.workers", 0..=256, 0) as usize;
    let queue = cx.int(&r.queue, "images.queue", 0..=100_000, 64) as usize;
    let avif_speed = cx.int(&r.avif_speed, "images.avif_speed", 1..=10, 7) as u8;
    let ttl = cx.duration(&r.ttl, "images.ttl", Duration::from_secs(86_400));
    let source_timeout = cx.duration(&r.source_timeout, "images.source_timeout", Duration::from_secs(10));
    if source_timeout.is_zero() {
        if let Some(v) = &r.source_timeout {
            cx.err(v, "images.source_timeout must be greater than 0");
        }
    }
    let source_host = r.source_host.as_ref().and_then(|h| {
        let v = h.get_ref().trim().to_ascii_lowercase();
        let ok = !v.is_empty()
            && v.len() <= 255
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
        if !ok {
            cx.err(h, format!("images.source_host {:?} is not a host name (host or host:port)", h.get_ref()));
        }
        ok.then_some(v)
    });
    Some(ImagesConfig {
        route,
        source,
        formats,
        quality,
        max_source_pixels,
        max_source_bytes,
        signing_key,
        presets,
        workers,
        queue,
        avif_speed,
        ttl,
        source_timeout,
        source_host,
    })
}

fn preset(cx: &mut Ctx<'_>, name: &str, raw: &S<RawPreset>) -> Option<ImagePreset> {
    let r = raw.get_ref();
    let key = |k: &str| format!("images.presets.{name}.{k}");
    let side =
        |cx: &mut Ctx<'_>, v: &Option<S<i64>>, k: &str| v.as_ref().map(|_| cx.int(v, &key(k), 1..=MAX_SIDE, 1) as u32);
    let width = side(cx, &r.width, "width");
    let height = side(cx, &r.height, "height");
    if width.is_none() && height.is_none() {
        cx.err(raw, format!("images.presets.{name} needs a width, a height, or both"));
        return None;
    }
    let fit = match &r.fit {
        None => Fit::Contain,
        Some(f) => Fit::parse(f.get_ref()).unwrap_or_else(|| {
            cx.err(f, format!("{}: unknown fit {:?} (contain, cover, fill)", key("fit"), f.get_ref()));
            Fit::Contain
        }),
    };
    let quality = r.quality.as_ref().map(|_| cx.int(&r.quality, &key("quality"), 1..=100, 80) as u8);
    let upscale = r.upscale.as_ref().is_some_and(|u| *u.get_ref());
    Some(ImagePreset { width, height, fit, quality, upscale })
}
