//! The history format before segments: `watch-series.bin`, rewritten whole every minute —
//! `FLW1`, then per series its name, labels and (time, value) pairs as little-endian f64, the
//! values already rates. Read once, streaming and bounded by the retention (no size limit), into
//! chunks that persistence then writes as segments.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::chunk::Chunk;
use crate::store::{ms, Store, CHUNK_POINTS};

const MAGIC: &[u8; 4] = b"FLW1";

pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("watch-series.bin")
}

/// Puts the old file's points into `store` (as values, not counter readings: they are rates
/// already); returns how many. A file that does not parse is set aside, as it always was.
pub fn load(data_dir: &Path, store: &mut Store) -> usize {
    let path = file(data_dir);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "watch history: cannot open the old history file");
            return 0;
        }
    };
    match read(BufReader::with_capacity(1 << 16, f), store) {
        Ok(n) => {
            tracing::info!(file = %path.display(), points = n, "watch history: read the old single-file history");
            n
        }
        Err(e) => {
            let aside = path.with_extension("bin.damaged");
            let _ = std::fs::rename(&path, &aside);
            tracing::warn!(error = %e, moved_to = %aside.display(), "watch history: the old history file is unreadable; set aside");
            0
        }
    }
}

fn read(mut r: impl Read, store: &mut Store) -> io::Result<usize> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::other("not a flotilla watch file"));
    }
    let horizon = store.now_ms().saturating_sub(store.retention_ms());
    let block = store.block_ms();
    let n = u32_of(&mut r)?;
    let mut kept = 0;
    for _ in 0..n {
        let name = get_str(&mut r)?;
        let nl = u16_of(&mut r)? as usize;
        let mut labels = Vec::with_capacity(nl);
        for _ in 0..nl {
            labels.push((get_str(&mut r)?, get_str(&mut r)?));
        }
        let np = u32_of(&mut r)?;
        let mut chunk = Chunk::new();
        for _ in 0..np {
            let (t, v) = (ms(f64_of(&mut r)?), f64_of(&mut r)?);
            if t <= horizon || !v.is_finite() || (chunk.count() > 0 && t <= chunk.last_t()) {
                continue;
            }
            if chunk.count() >= CHUNK_POINTS
                || (chunk.count() > 0 && chunk.first_t().div_euclid(block) != t.div_euclid(block))
            {
                kept += chunk.count() as usize;
                store.restore_chunk(&name, &labels, false, None, std::mem::take(&mut chunk), false);
            }
            chunk.push(t, v);
        }
        kept += chunk.count() as usize;
        store.restore_chunk(&name, &labels, false, None, chunk, false);
    }
    Ok(kept)
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

/// One series in the old format: name, labels, (seconds, value) pairs.
#[cfg(test)]
pub type OldSeries = (String, crate::store::Labels, Vec<(f64, f64)>);

/// Writes the old format (the durability tests make one to migrate).
#[cfg(test)]
pub fn write(data_dir: &Path, series: &[OldSeries]) -> io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(data_dir)?;
    let mut w = io::BufWriter::new(File::create(file(data_dir))?);
    w.write_all(MAGIC)?;
    w.write_all(&(series.len() as u32).to_le_bytes())?;
    let put = |w: &mut io::BufWriter<File>, s: &str| -> io::Result<()> {
        w.write_all(&(s.len() as u16).to_le_bytes())?;
        w.write_all(s.as_bytes())
    };
    for (name, labels, points) in series {
        put(&mut w, name)?;
        w.write_all(&(labels.len() as u16).to_le_bytes())?;
        for (k, v) in labels {
            put(&mut w, k)?;
            put(&mut w, v)?;
        }
        w.write_all(&(points.len() as u32).to_le_bytes())?;
        for (t, v) in points {
            w.write_all(&t.to_le_bytes())?;
            w.write_all(&v.to_le_bytes())?;
        }
    }
    w.flush()
}
