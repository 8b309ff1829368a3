//! A mirrored log record: `lsn: u64 BE | crc32c(data): u32 BE | data`.
//!
//! The LSN makes storage idempotent on the partner (a resent record is recognised), the CRC
//! catches corruption end to end (independent of the frame CRC, which only covers one hop).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Bytes before the data.
pub const RECORD_HEADER_LEN: usize = 12;

/// A record could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// Shorter than a header.
    #[error("record of {0} bytes is shorter than its 12-byte header")]
    Short(usize),
    /// Data does not match its CRC.
    #[error("record {lsn}: CRC32C mismatch")]
    BadCrc {
        /// The record's LSN.
        lsn: u64,
    },
}

/// Encodes a record.
pub fn encode(lsn: u64, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(RECORD_HEADER_LEN + data.len());
    b.put_u64(lsn);
    b.put_u32(crc32c::crc32c(data));
    b.put_slice(data);
    b.freeze()
}

/// Decodes and checks a record, returning its LSN and data.
pub fn decode(bytes: &Bytes) -> Result<(u64, Bytes), RecordError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Short(bytes.len()));
    }
    let mut lsn_b = [0u8; 8];
    lsn_b.copy_from_slice(&bytes[..8]);
    let lsn = u64::from_be_bytes(lsn_b);
    let crc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let data = bytes.slice(RECORD_HEADER_LEN..);
    if crc32c::crc32c(&data) != crc {
        return Err(RecordError::BadCrc { lsn });
    }
    Ok((lsn, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let r = encode(42, b"payload");
        assert_eq!(decode(&r).unwrap(), (42, Bytes::from_static(b"payload")));
        let mut bad = r.to_vec();
        bad[15] ^= 1;
        assert_eq!(
            decode(&Bytes::from(bad)),
            Err(RecordError::BadCrc { lsn: 42 })
        );
        assert_eq!(
            decode(&Bytes::from_static(b"short")),
            Err(RecordError::Short(5))
        );
    }
}
