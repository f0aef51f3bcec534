//! Config errors that point at the exact place in the file, so a user can jump to it.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a config file, located by line and column (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.col, self.message)
    }
}

/// Every error found in one load. Validation does not stop at the first problem,
/// because fixing a config one error per run is a miserable loop.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    /// The located errors (empty for a read failure).
    pub fn errors(&self) -> &[ConfigError] {
        match self {
            LoadError::Read { .. } => &[],
            LoadError::Invalid(errors) => errors,
        }
    }
}

fn render(errors: &[ConfigError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Maps byte offsets to line/column for one source text.
pub(crate) struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text }
    }

    pub(crate) fn error(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        ConfigError { file: self.file.to_path_buf(), line, col, message: message.into() }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_line_and_column() {
        let text = "a = 1\nbé = 2\n";
        let loc = Locator::new(Path::new("f.toml"), text);
        assert_eq!(loc.error(0, "x").to_string(), "f.toml:1:1: x");
        assert_eq!(loc.error(6, "x").to_string(), "f.toml:2:1: x");
        // 'é' is two bytes but one column.
        assert_eq!(loc.error(9, "x").to_string(), "f.toml:2:3: x");
    }
}
