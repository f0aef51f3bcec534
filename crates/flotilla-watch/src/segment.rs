//! The segment file format: the watch's history on disk, one file per block of time (and per
//! process run), only ever appended to.
//!
//! A file is a header — magic `FLWSEG01`, the block's start and end (epoch ms), the run that
//! wrote it, a CRC-32 — then records. Each record is its payload's length (u32 LE), the
//! payload's CRC-32, and the payload: entries that declare a series (id, name, labels), declare
//! a chunk (id, series, whether it holds counter readings, the point before it) and carry a
//! fragment of a chunk's bits (`from_bit..to_bit`). One flush appends one record per file, so a
//! torn write loses that flush only; a record that fails its CRC ends the reading of that file
//! and nothing else. Integers are LEB128 varints (zigzag for signed ones).

use std::io::{self, Read, Write};

use crate::store::Labels;

pub const MAGIC: &[u8; 8] = b"FLWSEG01";
pub const HEADER_LEN: usize = 8 + 8 + 8 + 8 + 4;
/// Records larger than this are damage, not data (a writer splits its flush below it).
pub const MAX_RECORD: usize = 16 << 20;
/// What a writer puts in one record at most before starting another.
pub const RECORD_TARGET: usize = 4 << 20;
const MAX_STR: usize = 1 << 16;
const MAX_LABELS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub block_start: i64,
    pub block_end: i64,
    pub run: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Series { id: u64, name: String, labels: Labels },
    Chunk { uid: u64, series: u64, counter: bool, prev: Option<(i64, f64)> },
    Fragment { uid: u64, from_bit: u32, to_bit: u32, bytes: Vec<u8> },
}

const TAG_SERIES: u8 = 1;
const TAG_CHUNK: u8 = 2;
const TAG_FRAGMENT: u8 = 3;

/// Why a file or record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("not a watch segment (bad magic or header checksum)")]
    Header,
    #[error("record of {0} bytes is larger than any writer makes")]
    Length(usize),
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record ends early")]
    Torn,
    #[error("malformed entry: {0}")]
    Entry(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.block_start.to_le_bytes());
        b[16..24].copy_from_slice(&self.block_end.to_le_bytes());
        b[24..32].copy_from_slice(&self.run.to_le_bytes());
        let crc = crc32fast::hash(&b[..32]);
        b[32..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn read(r: &mut impl Read) -> Result<Self, Damage> {
        let mut b = [0u8; HEADER_LEN];
        r.read_exact(&mut b).map_err(|_| Damage::Header)?;
        let word = |i: usize| <[u8; 8]>::try_from(&b[i..i + 8]).map_or(0, u64::from_le_bytes);
        let crc = <[u8; 4]>::try_from(&b[32..]).map_or(0, u32::from_le_bytes);
        if &b[..8] != MAGIC || crc32fast::hash(&b[..32]) != crc {
            return Err(Damage::Header);
        }
        Ok(Self { block_start: word(8) as i64, block_end: word(16) as i64, run: word(24) })
    }
}

/// Frames `payload` as one record (length, CRC, payload) and writes it in one call.
pub fn write_record(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 8);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// The next record's payload; None at a clean end of file.
pub fn read_record(r: &mut impl Read) -> Result<Option<Vec<u8>>, Damage> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(Damage::Torn),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_RECORD {
        return Err(Damage::Length(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Damage::Torn,
        _ => Damage::Io(e),
    })?;
    if crc32fast::hash(&payload) != crc {
        return Err(Damage::Checksum);
    }
    Ok(Some(payload))
}

pub fn encode(out: &mut Vec<u8>, e: &Entry) {
    match e {
        Entry::Series { id, name, labels } => {
            out.push(TAG_SERIES);
            put_uvar(out, *id);
            put_str(out, name);
            put_uvar(out, labels.len().min(MAX_LABELS) as u64);
            for (k, v) in labels.iter().take(MAX_LABELS) {
                put_str(out, k);
                put_str(out, v);
            }
        }
        Entry::Chunk { uid, series, counter, prev } => {
            out.push(TAG_CHUNK);
            put_uvar(out, *uid);
            put_uvar(out, *series);
            out.push(u8::from(*counter) | if prev.is_some() { 2 } else { 0 });
            if let Some((t, v)) = prev {
                put_uvar(out, zigzag(*t));
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Entry::Fragment { uid, from_bit, to_bit, bytes } => {
            out.push(TAG_FRAGMENT);
            put_uvar(out, *uid);
            put_uvar(out, u64::from(*from_bit));
            put_uvar(out, u64::from(*to_bit));
            out.extend_from_slice(bytes);
        }
    }
}

/// Every entry of a record's payload, or what is wrong with it.
pub fn decode(mut p: &[u8]) -> Result<Vec<Entry>, Damage> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = p.split_first() {
        p = rest;
        out.push(match tag {
            TAG_SERIES => {
                let id = uvar(&mut p)?;
                let name = get_str(&mut p)?;
                let n = uvar(&mut p)? as usize;
                if n > MAX_LABELS {
                    return Err(Damage::Entry("too many labels"));
                }
                let mut labels = Vec::with_capacity(n);
                for _ in 0..n {
                    labels.push((get_str(&mut p)?, get_str(&mut p)?));
                }
                Entry::Series { id, name, labels }
            }
            TAG_CHUNK => {
                let uid = uvar(&mut p)?;
                let series = uvar(&mut p)?;
                let flags = take(&mut p, 1)?[0];
                let prev = if flags & 2 != 0 {
                    let t = unzigzag(uvar(&mut p)?);
                    let v = f64::from_le_bytes(take(&mut p, 8)?.try_into().map_err(|_| Damage::Torn)?);
                    Some((t, v))
                } else {
                    None
                };
                Entry::Chunk { uid, series, counter: flags & 1 != 0, prev }
            }
            TAG_FRAGMENT => {
                let uid = uvar(&mut p)?;
                let from_bit = u32::try_from(uvar(&mut p)?).map_err(|_| Damage::Entry("bit offset"))?;
                let to_bit = u32::try_from(uvar(&mut p)?).map_err(|_| Damage::Entry("bit offset"))?;
                if to_bit < from_bit {
                    return Err(Damage::Entry("fragment ends before it starts"));
                }
                let n = (to_bit.div_ceil(8) - from_bit / 8) as usize;
                Entry::Fragment { uid, from_bit, to_bit, bytes: take(&mut p, n)?.to_vec() }
            }
            _ => return Err(Damage::Entry("unknown entry")),
        });
    }
    Ok(out)
}

fn put_uvar(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn uvar(p: &mut &[u8]) -> Result<u64, Damage> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let b = take(p, 1)?[0];
        x |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(x);
        }
    }
    Err(Damage::Entry("varint too long"))
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn unzigzag(x: u64) -> i64 {
    ((x >> 1) as i64) ^ -((x & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_STR - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_uvar(out, end as u64);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn get_str(p: &mut &[u8]) -> Result<String, Damage> {
    let n = uvar(p)? as usize;
    if n >= MAX_STR {
        return Err(Damage::Entry("string too long"));
    }
    String::from_utf8(take(p, n)?.to_vec()).map_err(|_| Damage::Entry("name is not UTF-8"))
}

fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], Damage> {
    if p.len() < n {
        return Err(Damage::Torn);
    }
    let (head, rest) = p.split_at(n);
    *p = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::Series {
                id: 7,
                name: "flotilla_http_requests_rate".into(),
                labels: vec![("class".into(), "2xx".into())],
            },
            Entry::Chunk { uid: 300, series: 7, counter: true, prev: Some((-5, 1.5)) },
            Entry::Chunk { uid: 301, series: 7, counter: false, prev: None },
            Entry::Fragment { uid: 300, from_bit: 13, to_bit: 200, bytes: vec![0xab; 25 - 1] },
            Entry::Fragment { uid: 301, from_bit: 0, to_bit: 0, bytes: vec![] },
        ]
    }

    #[test]
    fn entries_and_records_round_trip() {
        let mut payload = vec![];
        for e in entries() {
            encode(&mut payload, &e);
        }
        assert_eq!(decode(&payload).unwrap(), entries());
        let mut file = Header { block_start: 0, block_end: 7_200_000, run: 9 }.encode().to_vec();
        write_record(&mut file, &payload).unwrap();
        write_record(&mut file, b"").unwrap();
        let mut r = &file[..];
        assert_eq!(Header::read(&mut r).unwrap().run, 9);
        assert_eq!(read_record(&mut r).unwrap().unwrap(), payload);
        assert_eq!(read_record(&mut r).unwrap().unwrap(), b"");
        assert!(read_record(&mut r).unwrap().is_none());
        for (a, b) in [(i64::MIN, i64::MIN), (-1, -1), (i64::MAX, i64::MAX)] {
            assert_eq!(unzigzag(zigzag(a)), b);
        }
    }

    #[test]
    fn damage_is_reported_never_a_panic() {
        let mut payload = vec![];
        for e in entries() {
            encode(&mut payload, &e);
        }
        let mut file = vec![];
        write_record(&mut file, &payload).unwrap();
        // Torn at every length, and every single bit flipped.
        for cut in 1..file.len() {
            assert!(read_record(&mut &file[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..file.len() * 8 {
            let mut f = file.clone();
            f[i / 8] ^= 1 << (i % 8);
            assert!(read_record(&mut &f[..]).is_err(), "bit {i}");
        }
        // Payloads that pass a checksum but are garbage still decode to an error or entries.
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..5000 {
            let mut p = payload.clone();
            let i = rng.usize(..p.len());
            p[i] = rng.u8(..);
            p.truncate(rng.usize(..=p.len()));
            let _ = decode(&p);
        }
        let mut bad = Header { block_start: 1, block_end: 2, run: 3 }.encode();
        bad[20] ^= 1;
        assert!(matches!(Header::read(&mut &bad[..]), Err(Damage::Header)));
    }
}
