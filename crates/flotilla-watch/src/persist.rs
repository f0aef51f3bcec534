//! Keeps the watch's history across restarts: the store is written to `data_dir` every minute
//! and at shutdown (to a temporary file, then renamed, so a crash never leaves half a file), and
//! read back at start. A small binary format: `FLW1`, then per series its name, labels and
//! (time, value) pairs as little-endian f64. A file that does not parse is set aside, not fatal.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::store::{Labels, Point};

const MAGIC: &[u8; 4] = b"FLW1";
/// Refuse absurd lengths in a damaged file instead of allocating them.
const MAX_LEN: usize = 1 << 16;
const MAX_POINTS_IN_FILE: usize = 10_000_000;

pub fn file(dir: &Path) -> PathBuf {
    dir.join("watch-series.bin")
}

pub type Dump = Vec<(String, Labels, Vec<Point>)>;

pub fn save(dir: &Path, series: &Dump) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("watch-series.bin.tmp");
    {
        let mut w = io::BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        w.write_all(&(series.len() as u32).to_le_bytes())?;
        for (name, labels, points) in series {
            put_str(&mut w, name)?;
            w.write_all(&(labels.len() as u16).to_le_bytes())?;
            for (k, v) in labels {
                put_str(&mut w, k)?;
                put_str(&mut w, v)?;
            }
            w.write_all(&(points.len() as u32).to_le_bytes())?;
            for p in points {
                w.write_all(&p.t.to_le_bytes())?;
                w.write_all(&p.v.to_le_bytes())?;
            }
        }
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(tmp, file(dir))
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    let b = &s.as_bytes()[..s.len().min(MAX_LEN - 1)];
    w.write_all(&(b.len() as u16).to_le_bytes())?;
    w.write_all(b)
}

pub fn load(dir: &Path) -> io::Result<Dump> {
    let mut r = io::BufReader::new(std::fs::File::open(file(dir))?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::other("not a flotilla watch file"));
    }
    let n = u32_of(&mut r)? as usize;
    let mut out = Vec::with_capacity(n.min(MAX_LEN));
    let mut total = 0usize;
    for _ in 0..n {
        let name = get_str(&mut r)?;
        let nl = u16_of(&mut r)? as usize;
        let mut labels = Vec::with_capacity(nl);
        for _ in 0..nl {
            labels.push((get_str(&mut r)?, get_str(&mut r)?));
        }
        let np = u32_of(&mut r)? as usize;
        total += np;
        if total > MAX_POINTS_IN_FILE {
            return Err(io::Error::other("more points than a store can hold"));
        }
        let mut points = Vec::with_capacity(np);
        for _ in 0..np {
            points.push(Point { t: f64_of(&mut r)?, v: f64_of(&mut r)? });
        }
        out.push((name, labels, points));
    }
    Ok(out)
}

fn u16_of(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn u32_of(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn f64_of(r: &mut impl Read) -> io::Result<f64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(f64::from_le_bytes(b))
}

fn get_str(r: &mut impl Read) -> io::Result<String> {
    let n = u16_of(r)? as usize;
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| io::Error::other("bad UTF-8 in a name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("flw-{}", std::process::id()));
        let dump: Dump = vec![(
            "m".into(),
            vec![("a".into(), "b".into())],
            vec![Point { t: 1.0, v: 2.5 }, Point { t: 2.0, v: 3.0 }],
        )];
        save(&dir, &dump).unwrap();
        let back = load(&dir).unwrap();
        assert_eq!(back[0].0, "m");
        assert_eq!(back[0].2, dump[0].2);
        std::fs::write(file(&dir), b"FLW1\xff\xff\xff\xff").unwrap();
        assert!(load(&dir).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
