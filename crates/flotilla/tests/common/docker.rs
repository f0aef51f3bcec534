//! A real Docker daemon for the docker- and swarm-driver tests: an image holding this build's
//! `flotilla`, imported once per test binary. Tests skip, saying so, where no daemon answers.

use std::process::Command;
use std::sync::OnceLock;

use super::{scratch_dir, BIN};

pub const IMAGE: &str = "flotilla-test-demo:latest";

/// Imports an image holding this build's `flotilla` and the libraries it links (no registry is
/// reachable, and none is needed). None when Docker is not usable here.
pub fn image() -> Option<&'static str> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY.get_or_init(|| {
        let info = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        if !info.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping: no Docker daemon answers here");
            return false;
        }
        let root = scratch_dir("docker-rootfs").join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::copy(BIN, root.join("flotilla")).unwrap();
        let ldd = Command::new("ldd").arg(BIN).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
            let dest = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -c . | docker import --change 'ENTRYPOINT [\"/flotilla\"]' - {IMAGE} >/dev/null",
                root.display()
            ))
            .status()
            .unwrap();
        assert!(status.success(), "docker import failed");
        // The image holds the files now; a copy of the binary and its libraries per run adds up.
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
        true
    });
    ok.then_some(IMAGE)
}

/// The image, on an engine that is a Swarm manager (`.ci/run` runs `docker swarm init`).
pub fn swarm_image() -> Option<&'static str> {
    let image = image()?;
    let out = Command::new("docker").args(["info", "--format", "{{.Swarm.ControlAvailable}}"]).output().ok()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "true" {
        eprintln!(
            "skipping: this Docker engine is not a Swarm manager (run `docker swarm init --advertise-addr 127.0.0.1`)"
        );
        return None;
    }
    Some(image)
}
