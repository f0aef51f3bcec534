//! One run of a series' points, compressed as Gorilla does it (Pelkonen et al., VLDB 2015) and
//! Prometheus's XOR chunks after it: timestamps (milliseconds) as delta-of-delta, values as the
//! XOR with the previous value, both in a bit stream. A series sampled on a steady clock costs
//! one bit per timestamp, and a value that did not change one bit more.
//!
//! Bits are only ever appended, so a prefix of the stream is itself a valid chunk: persistence
//! writes what was appended since its last flush (`bits_from`), and a reader rebuilds a chunk by
//! concatenating those fragments. No crate fitted: `tsz` (2017) counts whole seconds with a
//! 14-bit first delta, `tsz-compress` packs integer columns, not floats.
//!
//! Layout: the first point is 64 bits of time and 64 of value. Every later point is a
//! delta-of-delta of its time — `0` for none, `10`+7 bits, `110`+14, `1110`+20, else `1111`+64
//! — then its value — `0` if unchanged, `10`+the meaningful XOR bits in the previous window,
//! else `11`+5 bits of leading zeros+6 bits of length+the meaningful bits.

/// Delta-of-delta buckets: (control bits, their count, value bits).
const DOD_BUCKETS: [(u64, u32, u32); 3] = [(0b10, 2, 7), (0b110, 3, 14), (0b1110, 4, 20)];

/// A growing or finished chunk: the bit stream and what appending the next point needs.
#[derive(Debug, Clone)]
pub struct Chunk {
    bytes: Vec<u8>,
    bits: u32,
    count: u32,
    first_t: i64,
    last_t: i64,
    last_v: u64,
    delta: i64,
    /// The previous XOR's leading and trailing zeros (`u8::MAX`: none yet).
    leading: u8,
    trailing: u8,
}

/// Why a chunk's bits could not be read back (a damaged file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt;

impl Chunk {
    pub fn new() -> Self {
        Self {
            bytes: Vec::new(),
            bits: 0,
            count: 0,
            first_t: 0,
            last_t: 0,
            last_v: 0,
            delta: 0,
            leading: u8::MAX,
            trailing: 0,
        }
    }

    /// Rebuilds a chunk from bits written by [`Chunk::push`] (e.g. read from disk): decodes it
    /// whole, keeps the longest prefix of valid points and is ready to take more.
    pub fn from_bits(mut bytes: Vec<u8>, bits: u32) -> (Self, Result<(), Corrupt>) {
        let bits = bits.min(u32::try_from(bytes.len() * 8).unwrap_or(u32::MAX));
        let mut c = Chunk::new();
        let mut d = Decoder::new(&bytes, bits);
        let mut outcome = Ok(());
        loop {
            match d.next_point() {
                Ok(Some((t, v))) => {
                    if c.count == 0 {
                        c.first_t = t;
                    }
                    c.count += 1;
                    c.last_t = t;
                    c.last_v = v.to_bits();
                    c.bits = d.pos;
                }
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        c.delta = d.delta;
        (c.leading, c.trailing) = (d.leading, d.trailing);
        if outcome.is_err() {
            // The decoder's window state belongs to the bad point: replay the good prefix.
            let good = c.bits;
            let mut again = Decoder::new(&bytes, good);
            while let Ok(Some(_)) = again.next_point() {}
            c.delta = again.delta;
            (c.leading, c.trailing) = (again.leading, again.trailing);
        }
        bytes.truncate(c.bits.div_ceil(8) as usize);
        // Bits past the end must be zero: later pushes OR into the last byte.
        if !c.bits.is_multiple_of(8) {
            if let Some(last) = bytes.last_mut() {
                *last &= 0xffu8 << (8 - c.bits % 8);
            }
        }
        c.bytes = bytes;
        (c, outcome)
    }

    /// Appends a point. Callers keep times strictly increasing and within ±2^62.
    pub fn push(&mut self, t: i64, v: f64) {
        let v = v.to_bits();
        if self.count == 0 {
            self.put(t as u64, 64);
            self.put(v, 64);
            self.first_t = t;
        } else {
            let delta = t.wrapping_sub(self.last_t);
            self.put_dod(delta.wrapping_sub(self.delta));
            self.delta = delta;
            self.put_xor(v ^ self.last_v);
        }
        self.count += 1;
        self.last_t = t;
        self.last_v = v;
    }

    fn put_dod(&mut self, dod: i64) {
        if dod == 0 {
            self.put(0, 1);
            return;
        }
        for (control, n, width) in DOD_BUCKETS {
            let half = 1i64 << (width - 1);
            if -half < dod && dod <= half {
                self.put(control, n);
                self.put(dod as u64 & ((1u64 << width) - 1), width);
                return;
            }
        }
        self.put(0b1111, 4);
        self.put(dod as u64, 64);
    }

    fn put_xor(&mut self, xor: u64) {
        if xor == 0 {
            self.put(0, 1);
            return;
        }
        let leading = xor.leading_zeros().min(31) as u8;
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != u8::MAX && leading >= self.leading && trailing >= self.trailing {
            let width = 64 - u32::from(self.leading) - u32::from(self.trailing);
            self.put(0b10, 2);
            self.put(xor >> self.trailing, width);
        } else {
            let width = 64 - u32::from(leading) - u32::from(trailing);
            self.put(0b11, 2);
            self.put(u64::from(leading), 5);
            // 64 meaningful bits are written as 0 (six bits hold 0..=63).
            self.put(u64::from(width) & 63, 6);
            self.put(xor >> trailing, width);
            self.leading = leading;
            self.trailing = trailing;
        }
    }

    /// Writes the low `n` bits of `value`, most significant first.
    fn put(&mut self, value: u64, n: u32) {
        let mut left = n;
        while left > 0 {
            let used = self.bits % 8;
            if used == 0 {
                self.bytes.push(0);
            }
            let room = 8 - used;
            let take = room.min(left);
            let chunk = (value >> (left - take)) & ((1u64 << take) - 1);
            let last = self.bytes.len() - 1;
            self.bytes[last] |= (chunk as u8) << (room - take);
            self.bits += take;
            left -= take;
        }
    }

    /// Gives back spare capacity once the chunk takes no more points.
    pub fn seal(&mut self) {
        self.bytes.shrink_to_fit();
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    pub fn last_t(&self) -> i64 {
        self.last_t
    }

    pub fn last_v(&self) -> f64 {
        f64::from_bits(self.last_v)
    }

    /// Heap bytes held (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// The bytes holding bits `from..` (the first byte may start with earlier bits, which a
    /// reader already has and overwrites with the same values).
    pub fn bits_from(&self, from: u32) -> &[u8] {
        let start = (from / 8) as usize;
        &self.bytes[start.min(self.bytes.len())..]
    }

    pub fn points(&self) -> Decoder<'_> {
        Decoder::new(&self.bytes, self.bits)
    }
}

impl Default for Chunk {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads points back in order; stops at the end of the bits or at the first malformed point.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    bits: u32,
    pos: u32,
    count: u32,
    t: i64,
    v: u64,
    delta: i64,
    leading: u8,
    trailing: u8,
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8], bits: u32) -> Self {
        Self { bytes, bits, pos: 0, count: 0, t: 0, v: 0, delta: 0, leading: u8::MAX, trailing: 0 }
    }

    fn get(&mut self, n: u32) -> Result<u64, Corrupt> {
        if n > self.bits - self.pos {
            return Err(Corrupt);
        }
        let mut out = 0u64;
        let mut left = n;
        while left > 0 {
            let byte = self.bytes[(self.pos / 8) as usize];
            let used = self.pos % 8;
            let take = (8 - used).min(left);
            let chunk = (byte >> (8 - used - take)) & ((1u16 << take) - 1) as u8;
            out = (out << take) | u64::from(chunk);
            self.pos += take;
            left -= take;
        }
        Ok(out)
    }

    /// The next point, None at the end, or `Corrupt` when the bits do not decode to a point
    /// later than the previous one.
    pub fn next_point(&mut self) -> Result<Option<(i64, f64)>, Corrupt> {
        if self.pos >= self.bits {
            return Ok(None);
        }
        if self.count == 0 {
            self.t = self.get(64)? as i64;
            self.v = self.get(64)?;
        } else {
            let dod = self.get_dod()?;
            let delta = self.delta.wrapping_add(dod);
            if delta <= 0 {
                return Err(Corrupt);
            }
            self.delta = delta;
            self.t = self.t.checked_add(delta).ok_or(Corrupt)?;
            self.get_xor()?;
        }
        self.count += 1;
        Ok(Some((self.t, f64::from_bits(self.v))))
    }

    fn get_dod(&mut self) -> Result<i64, Corrupt> {
        if self.get(1)? == 0 {
            return Ok(0);
        }
        for width in [7u32, 14, 20] {
            if self.get(1)? == 0 {
                let raw = self.get(width)?;
                let half = 1u64 << (width - 1);
                // Two's complement in `width` bits: (−half, half].
                return Ok(if raw > half { raw as i64 - (1i64 << width) } else { raw as i64 });
            }
        }
        Ok(self.get(64)? as i64)
    }

    fn get_xor(&mut self) -> Result<(), Corrupt> {
        if self.get(1)? == 0 {
            return Ok(());
        }
        if self.get(1)? == 0 {
            if self.leading == u8::MAX {
                return Err(Corrupt);
            }
            let width = 64 - u32::from(self.leading) - u32::from(self.trailing);
            self.v ^= self.get(width)? << self.trailing;
            return Ok(());
        }
        let leading = self.get(5)? as u32;
        let width = match self.get(6)? as u32 {
            0 => 64,
            w => w,
        };
        if leading + width > 64 {
            return Err(Corrupt);
        }
        let trailing = 64 - leading - width;
        self.v ^= self.get(width)? << trailing;
        self.leading = leading as u8;
        self.trailing = trailing as u8;
        Ok(())
    }
}

impl Iterator for Decoder<'_> {
    type Item = (i64, f64);

    /// Points until the end (or the first malformed one, which ends the run).
    fn next(&mut self) -> Option<(i64, f64)> {
        self.next_point().ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(points: &[(i64, f64)]) -> Chunk {
        let mut c = Chunk::new();
        for &(t, v) in points {
            c.push(t, v);
        }
        let back: Vec<_> = c.points().collect();
        assert_eq!(back.len(), points.len());
        for (a, b) in back.iter().zip(points) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{} vs {}", a.1, b.1);
        }
        c
    }

    #[test]
    fn every_bucket_round_trips() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut t = 1_790_000_000_000i64;
        let mut pts = vec![];
        for i in 0..5000 {
            // Steady, jittered, large and huge gaps; equal, nearby, random and special values.
            t += match i % 7 {
                0 => 10_000,
                1 => 10_000 + rng.i64(-60..60),
                2 => 10_000 + rng.i64(-8000..8000),
                3 => 10_000 + rng.i64(-500_000..500_000).abs(),
                4 => 1 + rng.i64(0..1 << 40),
                _ => 10_000,
            };
            let v = match i % 6 {
                0 => 0.0,
                1 => 12.5,
                2 => rng.f64() * 1e9,
                3 => -rng.f64(),
                4 => f64::from_bits(rng.u64(..) & !(0x7ffu64 << 52)),
                _ => (i / 6) as f64,
            };
            pts.push((t, v));
        }
        round_trip(&pts);
        round_trip(&[(0, f64::MAX), (1 << 53, -0.0), ((1 << 53) + 1, f64::MIN_POSITIVE)]);
        round_trip(&[]);
    }

    #[test]
    fn steady_series_cost_about_two_bits_a_point() {
        let pts: Vec<_> = (0..1000).map(|i| (1_790_000_000_000 + i * 10_000, 1.0)).collect();
        let c = round_trip(&pts);
        // 128 bits for the first point, then a 0 and a 0 per point (the second pays its delta).
        assert!(c.bits() <= 128 + 2 * 999 + 24, "{}", c.bits());
        // A busy counter: +100 ± 10 per sample.
        let mut v = 1e6;
        let mut rng = fastrand::Rng::with_seed(1);
        let pts: Vec<_> = (0..1000)
            .map(|i| {
                v += 90.0 + rng.f64() * 20.0;
                (1_790_000_000_000 + i * 10_000, v.round())
            })
            .collect();
        let c = round_trip(&pts);
        assert!(c.bits() / 1000 < 24, "{} bits a point", c.bits() / 1000);
    }

    #[test]
    fn prefixes_and_fragments_rebuild_the_chunk() {
        let mut c = Chunk::new();
        let mut fragments = vec![];
        let mut flushed = 0;
        for i in 0..300i64 {
            c.push(1000 + i * 997, (i * i) as f64 * 0.1);
            if i % 7 == 0 {
                fragments.push((flushed, c.bits(), c.bits_from(flushed).to_vec()));
                flushed = c.bits();
            }
        }
        fragments.push((flushed, c.bits(), c.bits_from(flushed).to_vec()));
        // A reader concatenates the fragments as the loader does.
        let mut bytes = vec![];
        let mut bits = 0;
        for (from, to, b) in fragments {
            assert_eq!(from, bits);
            bytes.truncate((from / 8) as usize);
            bytes.extend_from_slice(&b);
            bits = to;
        }
        let (mut back, ok) = Chunk::from_bits(bytes, bits);
        assert!(ok.is_ok());
        assert_eq!(back.count(), 300);
        assert_eq!(back.points().collect::<Vec<_>>(), c.points().collect::<Vec<_>>());
        // A rebuilt chunk takes more points exactly as the original does.
        back.push(1_000_000, 3.5);
        c.push(1_000_000, 3.5);
        assert_eq!(back.points().collect::<Vec<_>>(), c.points().collect::<Vec<_>>());
    }

    #[test]
    fn damaged_bits_keep_the_good_prefix_and_never_panic() {
        let mut c = Chunk::new();
        for i in 0..200i64 {
            c.push(i * 10_000, (i % 13) as f64);
        }
        let full: Vec<_> = c.points().collect();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let mut bytes = c.bits_from(0).to_vec();
            let at = rng.usize(..bytes.len());
            bytes[at] ^= 1 << rng.u8(0..8);
            let bits = rng.u32(0..c.bits() + 64);
            let (back, _) = Chunk::from_bits(bytes, bits);
            let got: Vec<_> = back.points().collect();
            assert_eq!(got.len() as u32, back.count());
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "times stay increasing");
            // Points before the damaged byte are exact.
            let safe = (at * 8).saturating_sub(200) / 145;
            for (a, b) in got.iter().zip(&full).take(safe) {
                assert_eq!(a, b);
            }
        }
        // Truncation mid-point keeps the whole points before it.
        let (back, ok) = Chunk::from_bits(c.bits_from(0).to_vec(), c.bits() - 1);
        assert!(ok.is_err());
        assert_eq!(back.count(), 199);
    }
}
