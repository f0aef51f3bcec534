//! Reads the Prometheus / OpenMetrics text exposition (what `/metrics` serves) into samples, so
//! every metric any part of flotilla exports is recorded without each part knowing the store.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Sorted by name.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Samples and the declared type of each metric family (keyed by family name).
pub fn parse(text: &str) -> (Vec<Sample>, HashMap<String, Kind>) {
    let mut kinds = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                let kind = match kind {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    _ => Kind::Other,
                };
                kinds.insert(name.to_string(), kind);
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = sample(line) {
            samples.push(s);
        }
    }
    (samples, kinds)
}

fn sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let (labels, rest) = if let Some(body) = rest.strip_prefix('{') { parse_labels(body)? } else { (Vec::new(), rest) };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// `a="x",b="y\"z"}` → labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            out.sort();
            return Some((out, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        out.push((key, value));
        s = &s[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openmetrics_text() {
        let text = "# HELP flotilla_requests Requests.\n# TYPE flotilla_requests counter\n\
            flotilla_requests_total{target_group=\"web\",class=\"5xx\"} 3\n\
            # TYPE flotilla_request_duration_seconds histogram\n\
            flotilla_request_duration_seconds_bucket{le=\"+Inf\",target_group=\"web\"} 7\n\
            flotilla_cache_memory_entries 12\nweird{a=\"x\\\"y\"} 1.5\n# EOF\n";
        let (samples, kinds) = parse(text);
        assert_eq!(kinds["flotilla_requests"], Kind::Counter);
        assert_eq!(kinds["flotilla_request_duration_seconds"], Kind::Histogram);
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].labels, vec![("class".into(), "5xx".into()), ("target_group".into(), "web".into())]);
        assert_eq!(samples[1].labels[0], ("le".to_string(), "+Inf".to_string()));
        assert_eq!(samples[2].value, 12.0);
        assert_eq!(samples[3].labels[0].1, "x\"y");
    }
}
