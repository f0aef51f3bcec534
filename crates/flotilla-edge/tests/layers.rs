//! The edge's request path reads top to bottom (ARCHITECTURE.md): listener → proxy phases →
//! cache layer → backend door → {upstream, files, images} → body. This test reads the crate's
//! own sources and fails when a module imports one that (transitively) imports it back, so a
//! shortcut that bends the path into a circle cannot land unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module pairs that know each other on purpose: a group starts one health-check task per
/// target, and the task reports back to its group.
const ALLOWED: &[(&str, &str)] = &[("group", "health"), ("health", "group")];

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            for sub in std::fs::read_dir(&p).unwrap().flatten() {
                files.push((p.file_name().unwrap().to_string_lossy().into_owned(), sub.path()));
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push((p.file_stem().unwrap().to_string_lossy().into_owned(), p));
        }
    }
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).filter(|m| m != "lib").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &files {
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            // `crate::name` and `crate::{a, b, c::d}`.
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(0)];
                inner.split(',').map(|n| n.trim().split("::").next().unwrap_or("").to_string()).collect()
            } else {
                vec![rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or("").to_string()]
            };
            for n in names {
                if modules.contains(&n) && n != *module {
                    deps.insert(n);
                }
            }
        }
    }
    graph
}

#[test]
fn the_request_path_has_no_import_cycles() {
    let graph = module_graph();
    assert!(graph.contains_key("proxy") && graph.contains_key("upstream"), "{graph:?}");
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if ALLOWED.contains(&(m.as_str(), d.as_str())) {
                    continue;
                }
                if d == to {
                    return true;
                }
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        false
    };
    let mut cycles = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            if !ALLOWED.contains(&(m.as_str(), d.as_str())) && reaches(d, m) {
                cycles.push(format!("{m} -> {d} -> … -> {m}"));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles in flotilla-edge: {cycles:#?}");
    // The bottom stays the bottom.
    assert!(graph["body"].is_empty(), "body imports {:?}", graph["body"]);
    for low in ["upstream", "files", "images", "pool", "context"] {
        for high in ["proxy", "cached", "backend", "image_route"] {
            assert!(!graph[low].contains(high), "{low} imports {high}, which is above it");
        }
    }
}
