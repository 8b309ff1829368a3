//! What the region scenarios share between the writer (node a, the leader) and the region's
//! holder (node b, the partner): the region's name and size, the bytes of write `i` (a pattern
//! both sides compute from `i` alone), the seeded generator of sizes and offsets, the commit
//! notice (a sync send after every K writes naming the writes the holder must find in its region
//! when the notice is delivered), and the digest of a region (CRC32C per MiB).

use bytes::Bytes;

/// The region node b's mirror client registers for `region_writes_under_host_cable_pull`.
pub const LOG_REGION: &str = "log";
/// Its size (issue 9: 64 MiB).
pub const LOG_REGION_LEN: u64 = 64 << 20;
/// The region node a's mirror client registers for `zombie_region_writes_fenced`.
pub const ZOMBIE_REGION: &str = "zombie";
pub const ZOMBIE_REGION_LEN: u64 = 1 << 20;
/// The zombie writer's chunk: write `i` covers `[i * ZOMBIE_CHUNK, +ZOMBIE_CHUNK)` modulo the
/// region.
pub const ZOMBIE_CHUNK: u64 = 4096;
/// A commit notice starts with this (records start with `PCML`).
const NOTICE_MAGIC: &str = "commit ";
/// The digest's chunk.
const DIGEST_CHUNK: usize = 1 << 20;

/// The bytes of write `i` (both sides recompute them from `i`).
pub fn pattern(i: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|j| (i.wrapping_mul(2_654_435_761).wrapping_add(j * 7) >> 3) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// Where the zombie writer's write `i` goes.
pub fn zombie_offset(i: u64) -> u64 {
    (i * ZOMBIE_CHUNK) % ZOMBIE_REGION_LEN
}

/// xorshift64: the writer's sizes and offsets, from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One write a notice names: index, offset, length.
pub type Named = (u64, u64, u64);

/// The commit notice after `count` writes: `commit <count> <i>:<off>:<len> ...`.
pub fn notice(count: u64, writes: &[Named]) -> Bytes {
    let mut s = format!("{NOTICE_MAGIC}{count}");
    for (i, o, l) in writes {
        s.push_str(&format!(" {i}:{o}:{l}"));
    }
    Bytes::from(s)
}

/// Whether a payload is a commit notice (and not a record).
pub fn is_notice(payload: &[u8]) -> bool {
    payload.starts_with(NOTICE_MAGIC.as_bytes())
}

/// Parses a notice: the write count and the writes it names.
pub fn parse_notice(payload: &[u8]) -> Result<(u64, Vec<Named>), String> {
    let text = std::str::from_utf8(payload).map_err(|_| "a notice that is not UTF-8")?;
    let rest = text.strip_prefix(NOTICE_MAGIC).ok_or("not a notice")?;
    let mut it = rest.split(' ');
    let count = it
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or("a notice without its count")?;
    let mut v = Vec::new();
    for w in it {
        let f: Vec<u64> = w.split(':').filter_map(|x| x.parse().ok()).collect();
        match f.as_slice() {
            [i, o, l] => v.push((*i, *o, *l)),
            _ => return Err(format!("a bad write {w:?} in a notice")),
        }
    }
    Ok((count, v))
}

/// The digest of `len` bytes read in chunks by `read(offset, len)`: CRC32C per MiB.
pub async fn digest<F, Fut>(len: u64, mut read: F) -> Result<Vec<u32>, String>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
{
    let mut v = Vec::new();
    let mut off = 0u64;
    while off < len {
        let n = DIGEST_CHUNK.min((len - off) as usize);
        let bytes = read(off, n).await?;
        if bytes.len() != n {
            return Err(format!("read {} bytes at {off}, asked {n}", bytes.len()));
        }
        v.push(crc32c::crc32c(&bytes));
        off += n as u64;
    }
    Ok(v)
}

/// The digest of an in-memory model.
pub fn digest_of(model: &[u8]) -> Vec<u32> {
    model.chunks(DIGEST_CHUNK).map(crc32c::crc32c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_are_not_records() {
        let n = notice(50, &[(49, 1024, 7), (48, 0, 4096)]);
        assert!(is_notice(&n));
        assert_eq!(
            parse_notice(&n).unwrap(),
            (50, vec![(49, 1024, 7), (48, 0, 4096)])
        );
        assert!(!is_notice(&super::super::record::encode(1, 1, 64)));
        assert!(parse_notice(b"commit x").is_err());
        assert!(parse_notice(b"commit 3 1:2").is_err());
    }

    #[test]
    fn patterns_differ_between_writes_and_digests_see_one_byte() {
        assert_ne!(pattern(1, 64), pattern(2, 64));
        assert_eq!(pattern(7, 100), pattern(7, 100));
        let mut m = vec![0u8; 3 << 20];
        let d0 = digest_of(&m);
        m[(2 << 20) + 5] = 1;
        let d1 = digest_of(&m);
        assert_eq!(d0.len(), 3);
        assert_eq!((d0[0], d0[1]), (d1[0], d1[1]));
        assert_ne!(d0[2], d1[2]);
    }
}
