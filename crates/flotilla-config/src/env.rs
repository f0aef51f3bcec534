//! `${VAR}` and `${VAR:-default}` expansion in secret-bearing values, so tokens stay out of files.

/// Expands variables using `lookup`. Returns the expanded text and the names of unset variables
/// that had no default (they expand to the empty string; the caller decides how loud to be).
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(input.len());
    let mut unset = Vec::new();
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed \"${{\" in {input:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in {input:?}"));
        }
        match (lookup(name), default) {
            (Some(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (_, None) => unset.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, unset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(expand("${TOKEN}", &env), Ok(("s3cret".into(), vec![])));
        assert_eq!(expand("a-${NOPE}-b", &env), Ok(("a--b".into(), vec!["NOPE".into()])));
        assert_eq!(expand("${NOPE:-dflt}", &env), Ok(("dflt".into(), vec![])));
        assert_eq!(expand("plain", &env), Ok(("plain".into(), vec![])));
        assert!(expand("${OPEN", &env).is_err());
        assert!(expand("${bad-name}", &env).is_err());
    }
}
