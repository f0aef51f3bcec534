//! `[images]` as written (see `crate::raw`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::raw::{SizeLit, S};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImages {
    pub route: Option<S<String>>,
    pub source: Option<S<String>>,
    pub formats: Option<S<Vec<S<String>>>>,
    pub quality: Option<S<RawImageQuality>>,
    pub max_source_pixels: Option<S<i64>>,
    pub max_source_bytes: Option<S<SizeLit>>,
    pub signing_key: Option<S<String>>,
    pub presets: Option<BTreeMap<S<String>, S<RawPreset>>>,
    pub workers: Option<S<i64>>,
    pub queue: Option<S<i64>>,
    pub avif_speed: Option<S<i64>>,
    pub ttl: Option<S<String>>,
    pub source_timeout: Option<S<String>>,
    pub source_host: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImageQuality {
    pub jpeg: Option<S<i64>>,
    pub webp: Option<S<i64>>,
    pub avif: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPreset {
    pub width: Option<S<i64>>,
    pub height: Option<S<i64>>,
    pub fit: Option<S<String>>,
    pub quality: Option<S<i64>>,
    pub upscale: Option<S<bool>>,
}
