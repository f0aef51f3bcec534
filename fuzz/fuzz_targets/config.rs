//! The config parser and the route matchers it builds: any text gives Ok or located errors,
//! never a panic; the parsed patterns then match arbitrary hosts and paths without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (doc, probe) = text.split_once("\n\u{0}").unwrap_or((text, "/a/b"));
    match flotilla_config::parse(std::path::Path::new("fuzz.toml"), doc, &|_| None) {
        Ok(cfg) => {
            let (host, path) = probe.split_once(' ').unwrap_or(("example.com", probe));
            for r in &cfg.routes {
                let _ = r.host.matches(host) && r.path.matches(path);
            }
        }
        Err(e) => {
            // Every error is rendered with a location.
            for err in e.errors() {
                assert!(err.to_string().starts_with("fuzz.toml:"), "{err}");
            }
        }
    }
});
