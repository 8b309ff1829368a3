//! Records the manager lane sends: `[magic "PCML"][tag u8][index u64 BE][body len u32 BE]
//! [body][crc32c u32 BE over all before it]`. The body is regenerated from (tag, index), so any
//! corruption is caught; a receiver answers a good sync record with [`code`].

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 4] = b"PCML";
pub const OVERHEAD: usize = 4 + 1 + 8 + 4 + 4;

fn body_byte_stream(tag: u8, index: u64) -> impl Iterator<Item = u8> {
    let mut x = (u64::from(tag) << 56) ^ index ^ 0x243F_6A88_85A3_08D3;
    std::iter::repeat_with(move || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    })
    .flatten()
}

/// A record of `total` bytes (at least [`OVERHEAD`]).
pub fn encode(tag: u8, index: u64, total: usize) -> Bytes {
    let body = total.saturating_sub(OVERHEAD);
    let mut b = BytesMut::with_capacity(OVERHEAD + body);
    b.put_slice(MAGIC);
    b.put_u8(tag);
    b.put_u64(index);
    b.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
    b.extend(body_byte_stream(tag, index).take(body));
    let crc = crc32c::crc32c(&b);
    b.put_u32(crc);
    b.freeze()
}

/// The return code a receiver answers a good record with (positive).
pub fn code(payload: &[u8]) -> i32 {
    (crc32c::crc32c(payload) & 0x3FFF_FFFF) as i32
}

/// Checks a record; returns its tag and index.
pub fn verify(p: &[u8]) -> Result<(u8, u64), String> {
    if p.len() < OVERHEAD {
        return Err(format!("{} bytes, shorter than a record header", p.len()));
    }
    if &p[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let (data, crc) = p.split_at(p.len() - 4);
    let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(data) != want {
        return Err("CRC32C mismatch".into());
    }
    let tag = p[4];
    let mut ix = [0u8; 8];
    ix.copy_from_slice(&p[5..13]);
    let index = u64::from_be_bytes(ix);
    let len = u32::from_be_bytes([p[13], p[14], p[15], p[16]]) as usize;
    if len != p.len() - OVERHEAD {
        return Err(format!(
            "record {index}: header says {len} body bytes, has {}",
            p.len() - OVERHEAD
        ));
    }
    if !body_byte_stream(tag, index)
        .take(len)
        .eq(p[17..17 + len].iter().copied())
    {
        return Err(format!("record {index}: body differs from its generator"));
    }
    Ok((tag, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let r = encode(1, 42, 300);
        assert_eq!(r.len(), 300);
        assert_eq!(verify(&r).unwrap(), (1, 42));
        let mut bad = r.to_vec();
        bad[100] ^= 1;
        assert!(verify(&bad).is_err());
        assert!(code(&r) > 0);
    }
}
