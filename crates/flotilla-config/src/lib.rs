//! Flotilla's configuration: the only crate that reads config files.
//!
//! Two stages, as in ripgrep's low/high args: `raw` mirrors the TOML with spans, then `validate`
//! produces the typed [`Config`] or *every* error as `FILE:LINE:COL: message`.

mod cluster;
pub mod cron;
mod ctx;
mod env;
mod error;
mod fleet;
mod images;
mod model;
mod net;
mod raw;
pub mod time;
pub mod units;
mod validate;
mod watch;

use std::path::{Path, PathBuf};

pub use cluster::model::*;
pub use error::{ConfigError, LoadError};
pub use fleet::model::*;
pub use images::model::*;
pub use model::*;
pub use net::{any_contains, Cidr};
pub use watch::model::*;

/// Reads and validates a config file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::Read { path: path.to_path_buf(), source: std::sync::Arc::new(e) })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Validates config text as if it were read from `path` (relative file paths resolve beside it).
/// `env` supplies environment variables, so tests need not touch the process environment.
pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, LoadError> {
    let loc = error::Locator::new(path, text);
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let msg = e.message().trim().lines().map(str::trim).collect::<Vec<_>>().join(": ");
        LoadError::Invalid(vec![loc.error(offset, msg)])
    })?;
    let base_dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = ctx::Ctx { loc, base_dir: &base_dir, env, errors: vec![], warnings: vec![] };
    match validate::config(&mut cx, raw, path.to_path_buf()) {
        Some(cfg) => Ok(cfg),
        None => Err(LoadError::Invalid(cx.errors)),
    }
}

#[cfg(test)]
mod tests;
