//! Every way a transform can fail, each with the status and reason the edge reports.

/// A refused or failed transform. The source is at fault for all but `Internal`, so those are
/// 422 Unprocessable Content with a reason a metric can count.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("image too large: {0}")]
    TooLarge(String),
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    #[error("image processing failed: {0}")]
    Internal(String),
}

impl ImageError {
    pub fn status(&self) -> u16 {
        match self {
            ImageError::Internal(_) => 500,
            _ => 422,
        }
    }

    /// A short label for metrics and JSON (`{"error": reason, "message": …}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::Unsupported(_) => "unsupported_format",
            ImageError::TooLarge(_) => "too_large",
            ImageError::Corrupt(_) => "corrupt",
            ImageError::Internal(_) => "internal",
        }
    }
}
