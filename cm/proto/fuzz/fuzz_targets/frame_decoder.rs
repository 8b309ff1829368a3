//! Arbitrary bytes into the frame decoder.
//!
//! Checks: no panic; every decoded frame consumed exactly its encoded length and re-encodes to
//! the very bytes it was decoded from; `Ok(None)` and `Err` consume nothing; the buffer never
//! grows beyond what the configured maximum allows; and feeding the same bytes in small chunks
//! yields the same frames and the same final outcome as feeding them at once.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peercm_cm_proto::frame::{Frame, FrameDecoder, FrameError, HEADER_LEN};

const MAX: u32 = 4096;

#[derive(Debug, PartialEq)]
enum End {
    NeedMore(usize),
    Error(FrameError),
}

/// Decodes everything at once; returns the frames and how it ended.
fn whole(d: &FrameDecoder, data: &[u8]) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let before = buf.len();
        let res = d.decode(&mut buf);
        // Growth is bounded by the configured maximum, never by the (peer-controlled) length
        // field: at most one reserve of a frame of the maximum size (Vec may double it).
        let bound = 2 * data.len().max(HEADER_LEN + MAX as usize);
        assert!(
            buf.capacity() <= bound,
            "capacity {} > {bound}",
            buf.capacity()
        );
        match res {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                assert_eq!(consumed, frame.encoded_len());
                assert!(consumed <= HEADER_LEN + MAX as usize);
                assert_eq!(frame.header.len as usize, frame.payload.len());
                assert!(frame.payload.len() <= MAX as usize);
                let re = frame.to_bytes();
                assert_eq!(
                    &re[..],
                    &data[offset..offset + consumed],
                    "re-encoding differs"
                );
                offset += consumed;
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                assert_eq!(&buf[..], &data[offset..]);
                assert!(buf.len() < HEADER_LEN + MAX as usize);
                return (frames, End::NeedMore(buf.len()));
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "an error consumed bytes");
                assert_eq!(&buf[..], &data[offset..]);
                return (frames, End::Error(e));
            }
        }
    }
}

/// Decodes the same bytes arriving `chunk` bytes at a time.
fn chunked(d: &FrameDecoder, data: &[u8], chunk: usize) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match d.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(e) => {
                    assert_eq!(buf.len(), before);
                    return (frames, End::Error(e));
                }
            }
        }
    }
    let left = buf.len();
    (frames, End::NeedMore(left))
}

fuzz_target!(|data: &[u8]| {
    let d = FrameDecoder::new(MAX);
    let (frames, end) = whole(&d, data);
    let chunk = 1 + data.first().map_or(0, |b| usize::from(*b % 64));
    for c in [1, chunk] {
        let (f2, e2) = chunked(&d, data, c);
        assert_eq!(f2, frames, "chunk size {c}: different frames");
        assert_eq!(e2, end, "chunk size {c}: different outcome");
    }
    // decode_slice agrees with the streaming decoder on the first frame.
    match (d.decode_slice(data), frames.first(), &end) {
        (Ok(Some(f)), Some(g), _) => assert_eq!(&f, g),
        (Ok(None), None, End::NeedMore(_)) => {}
        (Err(e), None, End::Error(e2)) => assert_eq!(&e, e2),
        other => panic!("decode_slice disagrees: {other:?}"),
    }
});
