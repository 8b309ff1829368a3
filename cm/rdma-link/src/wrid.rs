//! Work-request ids: the top four bits say what a request is, the rest is a sequence number
//! (data messages, one-sided writes) or a counter, so a completion maps back without a lookup table.

use crate::error::RequestKind;

const SHIFT: u32 = 60;
const LOW: u64 = (1 << SHIFT) - 1;

const DATA: u64 = 1;
const CREDIT: u64 = 2;
const PROBE: u64 = 3;
const RECV: u64 = 4;
const WRITE: u64 = 5;

/// The id of a request of `kind` with number `n` (the low 60 bits).
pub(crate) fn encode(kind: RequestKind, n: u64) -> u64 {
    let tag = match kind {
        RequestKind::Data => DATA,
        RequestKind::Credit => CREDIT,
        RequestKind::Probe => PROBE,
        RequestKind::Receive => RECV,
        RequestKind::OneSidedWrite => WRITE,
        RequestKind::Unknown => 0,
    };
    (tag << SHIFT) | (n & LOW)
}

/// The kind and number of a request id.
pub(crate) fn decode(wr_id: u64) -> (RequestKind, u64) {
    let kind = match wr_id >> SHIFT {
        DATA => RequestKind::Data,
        CREDIT => RequestKind::Credit,
        PROBE => RequestKind::Probe,
        RECV => RequestKind::Receive,
        WRITE => RequestKind::OneSidedWrite,
        _ => RequestKind::Unknown,
    };
    (kind, wr_id & LOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for kind in [
            RequestKind::Data,
            RequestKind::Credit,
            RequestKind::Probe,
            RequestKind::Receive,
            RequestKind::OneSidedWrite,
        ] {
            for n in [0, 1, LOW] {
                assert_eq!(decode(encode(kind, n)), (kind, n));
            }
        }
        assert_eq!(decode(7).0, RequestKind::Unknown);
    }
}
