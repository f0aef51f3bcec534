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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dDp0"));
        assert!(!authorized(&h, Some("t")));
    }
}
