//! Small state files that must survive a restart (the month's budget spend, a group's schedule
//! state): a header line `flotilla-state 1 <crc32>` then the JSON, written to a temporary file,
//! fsynced and renamed over the old one, so a crash leaves either the old file or the new one.
//! A file that is missing starts from nothing; one that is damaged (bad checksum, bad JSON) is
//! set aside as `NAME.damaged` with a log line, and also starts from nothing — as if there had
//! been no file, never a panic.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

const HEADER: &str = "flotilla-state 1";
/// Larger files are not ours (a state file holds a few numbers per group).
const MAX_BYTES: u64 = 1 << 20;

/// Writes `value` to `path` atomically (tmp → fsync → rename → fsync of the directory).
pub fn write<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let json = serde_json::to_string(value).map_err(io::Error::other)?;
    let text = format!("{HEADER} {:08x}\n{json}\n", crc32fast::hash(json.as_bytes()));
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The state in `path`; None when there is none or it is damaged (then logged, set aside).
pub fn read<T: DeserializeOwned>(path: &Path, what: &str) -> Option<T> {
    let text = match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Ok(m) if m.len() > MAX_BYTES => Err(io::Error::other("larger than a state file can be")),
        _ => fs::read_to_string(path),
    };
    let parsed = text.map_err(|e| e.to_string()).and_then(|t| parse(&t));
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".damaged");
            let _ = fs::rename(path, &aside);
            tracing::warn!(file = %path.display(), error = %e, moved_to = ?aside, "{what}: the saved state is damaged; starting without it");
            None
        }
    }
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let (head, json) = text.split_once('\n').ok_or("no header line")?;
    let crc = head.strip_prefix(HEADER).map(str::trim).ok_or("not a flotilla state file")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    let json = json.strip_suffix('\n').unwrap_or(json);
    if crc32fast::hash(json.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_str(json).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip_damage_and_absence() {
        let dir = std::env::temp_dir().join(format!("flw-state-{}", std::process::id()));
        let path = dir.join("x.state");
        let v = BTreeMap::from([("web".to_string(), 12.5f64)]);
        write(&path, &v).unwrap();
        assert_eq!(read::<BTreeMap<String, f64>>(&path, "t"), Some(v.clone()));
        // Overwritten whole, never appended.
        let w = BTreeMap::from([("api".to_string(), 1.0f64)]);
        write(&path, &w).unwrap();
        assert_eq!(read::<BTreeMap<String, f64>>(&path, "t"), Some(w));
        // One changed digit is caught by the checksum, not read as another amount.
        let text = fs::read_to_string(&path).unwrap().replace("1.0", "7.0");
        fs::write(&path, text).unwrap();
        assert_eq!(read::<BTreeMap<String, f64>>(&path, "t"), None);
        assert!(dir.join("x.state.damaged").exists());
        assert_eq!(read::<BTreeMap<String, f64>>(&path, "t"), None, "absent now");
        for junk in ["", "\n", "flotilla-state 1 zz\n{}", "{\"a\":1}", "flotilla-state 1 00000000\n"] {
            fs::write(&path, junk).unwrap();
            assert_eq!(read::<BTreeMap<String, f64>>(&path, "t"), None, "{junk:?}");
        }
        let _ = fs::remove_dir_all(dir);
    }
}
