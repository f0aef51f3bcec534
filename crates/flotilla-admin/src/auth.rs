//! Bearer-token check for mutating calls, compared in constant time.

use axum::http::{header, HeaderMap};

/// `None` token: mutating calls are disabled entirely (no token configured).
pub(crate) fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some(given) = given.strip_prefix("Bearer ").or_else(|| given.strip_prefix("bearer ")) else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares every byte of the expected token whatever was given, so the time taken says
/// nothing about how much of a guess was right, nor about the token's length.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, Some("t")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(authorized(&h, Some("t")));
        assert!(!authorized(&h, Some("u")));
        assert!(!authorized(&h, None));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tt"));
        assert!(!authorized(&h, Some("t")), "a longer guess with the right prefix");
        assert!(!authorized(&h, Some("ttt")), "a shorter guess with the right prefix");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(!authorized(&h, Some("t")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dDp0"));
        assert!(!authorized(&h, Some("t")));
    }
}
