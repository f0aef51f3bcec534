//! Keeps the watch's history across restarts, in `data_dir/watch/`: segment files
//! (`segment.rs`), one per block of time and process run, to which every flush (each minute and
//! at shutdown) appends the bits each chunk gained since the last one, then fsyncs. Nothing is
//! ever rewritten: a closed chunk is written once. A crash loses what came after the last flush;
//! a damaged record loses itself and what follows it in that file, logged; a segment whose block
//! is older than the retention is skipped and deleted, so loading reads at most the retention.
//!
//! A write that fails abandons its file (a torn tail is harmless: readers stop at it) and sends
//! the chunks it held whole to a new file. The format before segments (`watch-series.bin`, one
//! file rewritten whole) is read once and written out as segments.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::chunk::Chunk;
use crate::segment::{self, Damage, Entry, Header};
use crate::store::{Labels, Outgoing, Store};

mod legacy;

/// The directory of segment files inside `data_dir`.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("watch")
}

/// What loading found, for the log.
#[derive(Debug, Default)]
pub struct Loaded {
    pub segments: usize,
    pub chunks: usize,
    pub points: u64,
    /// Chunks that were damaged or cut short (their good prefix is kept).
    pub damaged_chunks: usize,
    /// Files (or parts of files) that could not be read.
    pub damaged_files: usize,
    pub expired_files: usize,
    pub legacy_points: usize,
    pub took: Duration,
}

struct Open {
    file: File,
    path: PathBuf,
    series: HashMap<(String, Labels), u64>,
    chunks: HashSet<u64>,
}

/// Appends flushes to segment files; owns the list of files for expiry.
pub struct Writer {
    dir: PathBuf,
    run: u64,
    next_seq: u64,
    block_ms: i64,
    /// Files written by this run that may take more, by block.
    open: BTreeMap<i64, Open>,
    /// Every segment file and the end of its block, for expiry.
    files: Vec<(PathBuf, i64)>,
}

impl Writer {
    /// Flushes what the store has not written yet; true when everything went to disk.
    pub fn flush(&mut self, store: &std::sync::Mutex<Store>) -> bool {
        let lock = || store.lock().unwrap_or_else(|e| e.into_inner());
        let (out, now, horizon) = {
            let s = lock();
            (s.outgoing(), s.now_ms(), s.now_ms().saturating_sub(s.retention_ms()))
        };
        let (written, abandoned) = self.write(out, now.div_euclid(self.block_ms));
        let ok = abandoned.is_empty();
        {
            let mut s = lock();
            s.flushed(&written);
            s.resend(&abandoned);
        }
        self.expire(horizon);
        ok
    }

    /// Writes one flush: per block, one record (or more, for a large flush) appended and
    /// synced. Returns what was written (chunk → bit reached) and the chunks of abandoned files.
    fn write(&mut self, out: Vec<Outgoing>, current_block: i64) -> (HashMap<u64, u32>, HashSet<u64>) {
        let mut by_block: BTreeMap<i64, Vec<Outgoing>> = BTreeMap::new();
        for o in out {
            by_block.entry(o.block).or_default().push(o);
        }
        let mut written = HashMap::new();
        let mut abandoned = HashSet::new();
        for (block, items) in by_block {
            match self.write_block(block, &items) {
                Ok(()) => written.extend(items.iter().map(|o| (o.uid, o.to_bit))),
                Err((path, e)) => {
                    tracing::warn!(file = %path.display(), error = %e, "watch history: a write failed; its chunks go to a new file");
                    if let Some(open) = self.open.remove(&block) {
                        abandoned.extend(open.chunks);
                    }
                    abandoned.extend(items.iter().map(|o| o.uid));
                }
            }
        }
        // Chunks of past blocks are sealed and now written: their files are complete.
        self.open.retain(|b, _| *b >= current_block);
        (written, abandoned)
    }

    fn write_block(&mut self, block: i64, items: &[Outgoing]) -> Result<(), (PathBuf, io::Error)> {
        if !self.open.contains_key(&block) {
            let open = self.create(block).map_err(|e| (self.dir.clone(), e))?;
            self.open.insert(block, open);
        }
        let Some(open) = self.open.get_mut(&block) else { return Ok(()) };
        let mut payload = Vec::new();
        for o in items {
            let key = (o.name.clone(), o.labels.clone());
            let next_id = open.series.len() as u64 + 1;
            let id = match open.series.get(&key) {
                Some(id) => *id,
                None => {
                    segment::encode(
                        &mut payload,
                        &Entry::Series { id: next_id, name: o.name.clone(), labels: o.labels.clone() },
                    );
                    open.series.insert(key, next_id);
                    next_id
                }
            };
            if open.chunks.insert(o.uid) {
                segment::encode(
                    &mut payload,
                    &Entry::Chunk { uid: o.uid, series: id, counter: o.counter, prev: o.prev },
                );
            }
            segment::encode(
                &mut payload,
                &Entry::Fragment { uid: o.uid, from_bit: o.from_bit, to_bit: o.to_bit, bytes: o.bytes.clone() },
            );
            if payload.len() >= segment::RECORD_TARGET {
                segment::write_record(&mut open.file, &payload).map_err(|e| (open.path.clone(), e))?;
                payload.clear();
            }
        }
        if !payload.is_empty() {
            segment::write_record(&mut open.file, &payload).map_err(|e| (open.path.clone(), e))?;
        }
        open.file.sync_data().map_err(|e| (open.path.clone(), e))
    }

    fn create(&mut self, block: i64) -> io::Result<Open> {
        fs::create_dir_all(&self.dir)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.dir.join(format!("{seq:010}.seg"));
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        let block_start = block.saturating_mul(self.block_ms);
        let header = Header { block_start, block_end: block_start.saturating_add(self.block_ms), run: self.run };
        file.write_all(&header.encode())?;
        file.sync_all()?;
        // The new name must survive a crash too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.files.push((path.clone(), header.block_end));
        Ok(Open { file, path, series: HashMap::new(), chunks: HashSet::new() })
    }

    /// Deletes segment files whose whole block is at or before `horizon` (ms).
    fn expire(&mut self, horizon: i64) {
        let open: HashSet<PathBuf> = self.open.values().map(|o| o.path.clone()).collect();
        self.files.retain(|(path, end)| {
            if *end > horizon || open.contains(path) {
                return true;
            }
            match fs::remove_file(path) {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "watch history: cannot delete an expired segment");
                    true
                }
            }
        });
    }
}

/// A chunk being put back together from its fragments.
struct Build {
    name: String,
    labels: Labels,
    counter: bool,
    prev: Option<(i64, f64)>,
    bytes: Vec<u8>,
    bits: u32,
    /// A fragment was missing or malformed: later ones cannot be placed.
    broken: bool,
}

/// A rebuilt chunk, whether it holds counter readings, and the point before it.
type Restored = (Chunk, bool, Option<(i64, f64)>);

/// A chunk is at most `CHUNK_POINTS` points of at most 145 bits: anything longer is damage.
const MAX_CHUNK_BYTES: usize = crate::store::CHUNK_POINTS as usize * 19 + 64;

/// Reads `data_dir` into `store` (whose window must already end at the present) and returns
/// the writer that continues it.
pub fn load(data_dir: &Path, store: &mut Store) -> (Writer, Loaded) {
    let started = Instant::now();
    let dir = segments_dir(data_dir);
    let mut report = Loaded::default();
    let horizon = store.now_ms().saturating_sub(store.retention_ms());
    report.legacy_points = legacy::load(data_dir, store);
    let mut names: Vec<(u64, PathBuf)> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let seq = p.file_name()?.to_str()?.strip_suffix(".seg")?.parse().ok()?;
                Some((seq, p))
            })
            .collect(),
        Err(_) => vec![],
    };
    names.sort();
    let next_seq = names.last().map_or(1, |(s, _)| s + 1);
    let mut files = Vec::new();
    let mut builds: Vec<Build> = Vec::new();
    let mut index: HashMap<(u64, u64), usize> = HashMap::new();
    for (_, path) in names {
        match read_segment(&path, horizon, &mut builds, &mut index) {
            Ok(Some(end)) => {
                report.segments += 1;
                files.push((path, end));
            }
            Ok(None) => {
                report.expired_files += 1;
                let _ = fs::remove_file(&path);
            }
            Err((end, e)) => {
                report.damaged_files += 1;
                match end {
                    // Part of the file was read; keep it until its block expires.
                    Some(end) => {
                        tracing::warn!(file = %path.display(), error = %e, "watch history: a segment is damaged; what follows the damage in it is lost");
                        files.push((path, end));
                    }
                    None => {
                        let aside = path.with_extension("seg.damaged");
                        tracing::warn!(file = %path.display(), error = %e, moved_to = %aside.display(), "watch history: an unreadable segment is set aside");
                        let _ = fs::rename(&path, &aside);
                    }
                }
            }
        }
    }
    // Chunks per series in time order (a chunk sent again may sit in a later file).
    let mut per_series: HashMap<(String, Labels), Vec<Restored>> = HashMap::new();
    for b in builds {
        let (chunk, outcome) = Chunk::from_bits(b.bytes, b.bits);
        if outcome.is_err() || b.broken {
            report.damaged_chunks += 1;
        }
        if chunk.count() > 0 {
            per_series.entry((b.name, b.labels)).or_default().push((chunk, b.counter, b.prev));
        }
    }
    for ((name, labels), mut chunks) in per_series {
        chunks.sort_by_key(|(c, _, _)| c.first_t());
        for (chunk, counter, prev) in chunks {
            let n = u64::from(chunk.count());
            if store.restore_chunk(&name, &labels, counter, prev, chunk, true) {
                report.chunks += 1;
                report.points += n;
            }
        }
    }
    if report.damaged_chunks > 0 {
        tracing::warn!(
            chunks = report.damaged_chunks,
            "watch history: some chunks were damaged or cut short; their good points are kept"
        );
    }
    report.took = started.elapsed();
    let writer = Writer { dir, run: run_id(), next_seq, block_ms: store.block_ms(), open: BTreeMap::new(), files };
    (writer, report)
}

/// Once the old single file's points are in the store, writes them out and removes it.
pub fn finish_migration(data_dir: &Path, writer: &mut Writer, store: &std::sync::Mutex<Store>) {
    let old = legacy::file(data_dir);
    if !old.exists() {
        return;
    }
    if writer.flush(store) {
        match fs::remove_file(&old) {
            Ok(()) => {
                tracing::info!(file = %old.display(), "watch history: the old single-file history is now in segments")
            }
            Err(e) => {
                tracing::warn!(file = %old.display(), error = %e, "watch history: cannot remove the old history file")
            }
        }
    }
}

/// Reads one file into `builds`. Ok(Some(block end)) when read whole, Ok(None) when its block
/// is past the retention (not read), Err with the block end when the header was good.
fn read_segment(
    path: &Path,
    horizon: i64,
    builds: &mut Vec<Build>,
    index: &mut HashMap<(u64, u64), usize>,
) -> Result<Option<i64>, (Option<i64>, Damage)> {
    let mut r = BufReader::with_capacity(1 << 16, File::open(path).map_err(|e| (None, e.into()))?);
    let h = Header::read(&mut r).map_err(|e| (None, e))?;
    if h.block_end <= horizon {
        return Ok(None);
    }
    let mut series: HashMap<u64, (String, Labels)> = HashMap::new();
    loop {
        let payload = match segment::read_record(&mut r) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Some(h.block_end)),
            // A torn last record: the flush a crash interrupted. Nothing else is lost.
            Err(Damage::Torn) => {
                tracing::info!(file = %path.display(), "watch history: the last flush before a crash was incomplete; skipped");
                return Ok(Some(h.block_end));
            }
            Err(e) => return Err((Some(h.block_end), e)),
        };
        let entries = segment::decode(&payload).map_err(|e| (Some(h.block_end), e))?;
        for e in entries {
            match e {
                Entry::Series { id, name, labels } => {
                    series.insert(id, (name, labels));
                }
                Entry::Chunk { uid, series: sid, counter, prev } => {
                    let Some((name, labels)) = series.get(&sid) else {
                        return Err((Some(h.block_end), Damage::Entry("chunk of an undeclared series")));
                    };
                    index.entry((h.run, uid)).or_insert_with(|| {
                        builds.push(Build {
                            name: name.clone(),
                            labels: labels.clone(),
                            counter,
                            prev,
                            bytes: Vec::new(),
                            bits: 0,
                            broken: false,
                        });
                        builds.len() - 1
                    });
                }
                Entry::Fragment { uid, from_bit, to_bit, bytes } => {
                    let Some(b) = index.get(&(h.run, uid)).and_then(|&i| builds.get_mut(i)) else {
                        return Err((Some(h.block_end), Damage::Entry("fragment of an undeclared chunk")));
                    };
                    if b.broken {
                        continue;
                    }
                    // Bits continue where the chunk ends, or replace its tail (sent again).
                    let end = to_bit.div_ceil(8) as usize;
                    if from_bit > b.bits || end > MAX_CHUNK_BYTES {
                        b.broken = true;
                        continue;
                    }
                    b.bytes.truncate((from_bit / 8) as usize);
                    b.bytes.extend_from_slice(&bytes);
                    b.bits = to_bit;
                }
            }
        }
    }
}

/// Tells this run's chunks from earlier runs' (chunk ids restart with each process).
fn run_id() -> u64 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 48) ^ fastrand::u64(..)
}

#[cfg(test)]
mod tests;
