//! The image URL grammar, its HMAC signatures, and `srcset` documents.
//!
//! `{route}/{preset}/{path}` names a configured size; `{route}/w=500,h=300,fit=cover,q=70,f=webp/{path}`
//! is an ad-hoc size, accepted only with `?s=` = base64url(HMAC-SHA256(key, "{options}/{path}"))
//! when a signing key is set (as imgproxy signs its URLs: nobody can make the edge render
//! arbitrary sizes); `{route}/srcset/{path}` lists the presets.

use std::collections::BTreeMap;

use base64::Engine as _;
use flotilla_config::{Fit, ImageFormat, ImagePreset};

use crate::geometry::{plan, Target};

const MAX_SIDE: u32 = 8192;

/// A parsed image URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUrl {
    Variant { variant: Variant, path: String },
    Srcset { path: String, html: bool },
}

/// Which size: a configured preset or ad-hoc options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variant {
    Preset(String),
    Adhoc(Adhoc),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adhoc {
    /// The options segment as written (what the signature covers and the cache key names).
    pub canonical: String,
    pub target: Target,
    pub quality: Option<u8>,
    pub format: Option<ImageFormat>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("no such image preset {0:?}")]
    UnknownPreset(String),
    #[error("bad image options: {0}")]
    BadOptions(String),
    #[error("bad image path: {0}")]
    BadPath(String),
    #[error("ad-hoc image sizes need a valid signature (?s=)")]
    Unsigned,
    #[error("ad-hoc image sizes are disabled: set images.signing_key to allow signed ones")]
    AdhocDisabled,
}

impl UrlError {
    pub fn status(&self) -> u16 {
        match self {
            UrlError::UnknownPreset(_) => 404,
            UrlError::Unsigned | UrlError::AdhocDisabled => 403,
            _ => 400,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            UrlError::UnknownPreset(_) => "unknown_preset",
            UrlError::BadOptions(_) => "bad_options",
            UrlError::BadPath(_) => "bad_path",
            UrlError::Unsigned => "bad_signature",
            UrlError::AdhocDisabled => "adhoc_disabled",
        }
    }
}

/// Parses the part of the URL after the route prefix (`rest` starts with '/'), with the query.
pub fn parse(
    rest: &str,
    query: Option<&str>,
    presets: &BTreeMap<String, ImagePreset>,
    signing_key: Option<&[u8]>,
) -> Result<ImageUrl, UrlError> {
    let rest = rest.strip_prefix('/').ok_or_else(|| UrlError::BadPath("expected /{preset}/{path}".into()))?;
    let (first, path) = rest.split_once('/').ok_or_else(|| UrlError::BadPath("expected /{preset}/{path}".into()))?;
    let path = format!("/{path}");
    check_path(&path)?;
    if first == "srcset" {
        let html = query.is_some_and(|q| q.split('&').any(|p| p == "html" || p.starts_with("html=")));
        return Ok(ImageUrl::Srcset { path, html });
    }
    if !first.contains('=') {
        return if presets.contains_key(first) {
            Ok(ImageUrl::Variant { variant: Variant::Preset(first.to_string()), path })
        } else {
            Err(UrlError::UnknownPreset(first.to_string()))
        };
    }
    let key = signing_key.ok_or(UrlError::AdhocDisabled)?;
    let sig = query.and_then(|q| q.split('&').find_map(|p| p.strip_prefix("s="))).ok_or(UrlError::Unsigned)?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).map_err(|_| UrlError::Unsigned)?;
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    // Constant-time comparison inside ring.
    ring::hmac::verify(&k, format!("{first}{path}").as_bytes(), &sig).map_err(|_| UrlError::Unsigned)?;
    Ok(ImageUrl::Variant { variant: Variant::Adhoc(adhoc(first)?), path })
}

/// The `s=` value for an ad-hoc URL: `sign(key, "w=500,q=70", "/photos/cat.jpg")`.
pub fn sign(key: &[u8], options: &str, path: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, format!("{options}{path}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

fn check_path(path: &str) -> Result<(), UrlError> {
    if path.len() < 2 || path.len() > 2048 {
        return Err(UrlError::BadPath("the source path is empty or too long".into()));
    }
    let decoded = percent_decode(path).ok_or_else(|| UrlError::BadPath("bad percent-encoding".into()))?;
    if decoded.split('/').any(|seg| seg == ".." || seg == ".")
        || decoded.contains(['\0', '\\'])
        || decoded.contains("//")
    {
        return Err(UrlError::BadPath("'.', '..', '//', backslashes and NUL are not allowed".into()));
    }
    Ok(())
}

/// `%XX` decoding; `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn adhoc(options: &str) -> Result<Adhoc, UrlError> {
    let bad = |m: String| UrlError::BadOptions(m);
    let mut target = Target { width: None, height: None, fit: Fit::Contain, upscale: false };
    let (mut quality, mut format) = (None, None);
    for opt in options.split(',') {
        let (k, v) = opt.split_once('=').ok_or_else(|| bad(format!("{opt:?} is not key=value")))?;
        let side = || {
            v.parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SIDE).contains(n))
                .ok_or_else(|| bad(format!("{k}={v}: 1..={MAX_SIDE}")))
        };
        match k {
            "w" => target.width = Some(side()?),
            "h" => target.height = Some(side()?),
            "fit" => target.fit = Fit::parse(v).ok_or_else(|| bad(format!("fit={v}: contain, cover or fill")))?,
            "q" => {
                quality = Some(
                    v.parse::<u8>()
                        .ok()
                        .filter(|q| (1..=100).contains(q))
                        .ok_or_else(|| bad(format!("q={v}: 1..=100")))?,
                )
            }
            "f" => format = Some(ImageFormat::parse(v).ok_or_else(|| bad(format!("f={v}: avif, webp or jpeg")))?),
            "up" => target.upscale = v == "1",
            _ => return Err(bad(format!("unknown option {k:?} (w, h, fit, q, f, up)"))),
        }
    }
    if target.width.is_none() && target.height.is_none() {
        return Err(bad("give w, h or both".into()));
    }
    Ok(Adhoc { canonical: options.to_string(), target, quality, format })
}

/// Picks the output format: the first configured format the client's `Accept` allows. JPEG is
/// assumed acceptable to everyone (browsers send `image/*` or nothing specific for it); when
/// nothing matches, the last configured format is used.
pub fn negotiate(accept: Option<&str>, formats: &[ImageFormat]) -> ImageFormat {
    let accept = accept.unwrap_or("");
    let allows = |mime: &str| {
        accept.split(',').any(|part| {
            let mut it = part.split(';');
            let m = it.next().unwrap_or("").trim();
            let refused = it.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            m.eq_ignore_ascii_case(mime) && !refused
        })
    };
    formats
        .iter()
        .copied()
        .find(|f| *f == ImageFormat::Jpeg || allows(f.mime()))
        .unwrap_or_else(|| formats.last().copied().unwrap_or(ImageFormat::Jpeg))
}

/// One preset's entry in a srcset document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrcsetEntry {
    pub preset: String,
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// Width-only presets keep the source's aspect ratio and so belong in `srcset`.
    pub in_srcset: bool,
}

/// Every preset's URL and real output size for a source of `width`×`height` (as displayed).
pub fn srcset(
    route: &str,
    path: &str,
    width: u32,
    height: u32,
    presets: &BTreeMap<String, ImagePreset>,
) -> Vec<SrcsetEntry> {
    let mut out: Vec<SrcsetEntry> = presets
        .iter()
        .map(|(name, p)| {
            let t = Target { width: p.width, height: p.height, fit: p.fit, upscale: p.upscale };
            let pl = plan(width, height, &t);
            SrcsetEntry {
                preset: name.clone(),
                url: format!("{route}/{name}{path}"),
                width: pl.width,
                height: pl.height,
                in_srcset: p.height.is_none() || p.fit == Fit::Contain,
            }
        })
        .collect();
    out.sort_by_key(|e| (e.width, e.preset.clone()));
    out
}

/// The `<img>` snippet: widths deduplicated (presets larger than the source collapse onto it).
pub fn srcset_html(entries: &[SrcsetEntry]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let picks: Vec<&SrcsetEntry> = entries.iter().filter(|e| e.in_srcset && seen.insert(e.width)).collect();
    let srcset = picks.iter().map(|e| format!("{} {}w", escape(&e.url), e.width)).collect::<Vec<_>>().join(", ");
    let Some(fallback) = picks.iter().rev().find(|e| e.width <= 1024).or(picks.first()) else {
        return String::new();
    };
    format!(
        "<img src=\"{}\" srcset=\"{srcset}\" sizes=\"(max-width: {w}px) 100vw, {w}px\" width=\"{w}\" height=\"{h}\" loading=\"lazy\" decoding=\"async\" alt=\"\">",
        escape(&fallback.url),
        w = fallback.width,
        h = fallback.height,
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presets() -> BTreeMap<String, ImagePreset> {
        flotilla_config::ImagesConfig::default_presets()
    }

    #[test]
    fn presets_and_srcset_urls() {
        let p = presets();
        assert_eq!(
            parse("/small/photos/cat.jpg", None, &p, None),
            Ok(ImageUrl::Variant { variant: Variant::Preset("small".into()), path: "/photos/cat.jpg".into() })
        );
        assert_eq!(parse("/huge/cat.jpg", None, &p, None), Err(UrlError::UnknownPreset("huge".into())));
        assert_eq!(
            parse("/srcset/cat.jpg", Some("html"), &p, None),
            Ok(ImageUrl::Srcset { path: "/cat.jpg".into(), html: true })
        );
        for bad in ["/small/../etc/passwd", "/small/a/%2e%2e/b", "/small//x", "/small/", "small/x"] {
            assert!(matches!(parse(bad, None, &p, None), Err(UrlError::BadPath(_))), "{bad}");
        }
    }

    #[test]
    fn adhoc_needs_a_valid_signature() {
        let p = presets();
        let key = b"0123456789abcdef-key";
        let s = sign(key, "w=500,q=70", "/photos/cat.jpg");
        let ok = parse("/w=500,q=70/photos/cat.jpg", Some(&format!("s={s}")), &p, Some(key)).unwrap();
        let ImageUrl::Variant { variant: Variant::Adhoc(a), .. } = ok else { panic!("{ok:?}") };
        assert_eq!((a.target.width, a.quality), (Some(500), Some(70)));
        // Another size, path or key with the same signature: refused.
        assert_eq!(
            parse("/w=501,q=70/photos/cat.jpg", Some(&format!("s={s}")), &p, Some(key)),
            Err(UrlError::Unsigned)
        );
        assert_eq!(
            parse("/w=500,q=70/photos/dog.jpg", Some(&format!("s={s}")), &p, Some(key)),
            Err(UrlError::Unsigned)
        );
        assert_eq!(
            parse("/w=500,q=70/photos/cat.jpg", Some(&format!("s={s}")), &p, Some(b"another-key-16chars")),
            Err(UrlError::Unsigned)
        );
        assert_eq!(parse("/w=500,q=70/photos/cat.jpg", None, &p, Some(key)), Err(UrlError::Unsigned));
        assert_eq!(parse("/w=500/photos/cat.jpg", None, &p, None), Err(UrlError::AdhocDisabled));
        let bad = sign(key, "w=0", "/c.jpg");
        assert!(matches!(parse("/w=0/c.jpg", Some(&format!("s={bad}")), &p, Some(key)), Err(UrlError::BadOptions(_))));
    }

    #[test]
    fn negotiation_follows_config_order_and_accept() {
        let all = [ImageFormat::Avif, ImageFormat::Webp, ImageFormat::Jpeg];
        assert_eq!(negotiate(Some("image/avif,image/webp,*/*"), &all), ImageFormat::Avif);
        assert_eq!(negotiate(Some("image/webp,*/*"), &all), ImageFormat::Webp);
        assert_eq!(negotiate(Some("image/avif;q=0,image/webp"), &all), ImageFormat::Webp);
        assert_eq!(negotiate(None, &all), ImageFormat::Jpeg);
        assert_eq!(negotiate(Some("image/avif"), &[ImageFormat::Webp, ImageFormat::Jpeg]), ImageFormat::Jpeg);
        assert_eq!(negotiate(Some("image/png"), &[ImageFormat::Webp]), ImageFormat::Webp);
    }

    #[test]
    fn srcset_lists_real_widths() {
        let e = srcset("/_img", "/a.jpg", 1000, 500, &presets());
        let widths: Vec<(String, u32)> = e.iter().map(|e| (e.preset.clone(), e.width)).collect();
        assert_eq!(
            widths,
            vec![("thumbnail".into(), 150), ("small".into(), 320), ("medium".into(), 768), ("large".into(), 1000)]
        );
        let html = srcset_html(&e);
        assert!(
            html.contains("srcset=\"/_img/small/a.jpg 320w, /_img/medium/a.jpg 768w, /_img/large/a.jpg 1000w\""),
            "{html}"
        );
        assert!(html.contains("src=\"/_img/large/a.jpg\"") && html.contains("loading=\"lazy\""), "{html}");
    }
}
