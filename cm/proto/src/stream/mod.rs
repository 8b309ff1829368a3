//! Per-client, per-direction message streams: what makes delivery ordered and exactly-once
//! while messages are spread over several links and links come and go.
//!
//! Sender ([`SendStream`]): every message gets the next sequence number and is kept until it
//! completes: the partner has it (cumulative receipt ack) for local sends, the partner's client
//! took it (the consumed mark) for async ones, the partner client's return code arrived for
//! synchronous ones. When a link dies the session calls [`SendStream::replay_all`]: everything
//! unacknowledged is sent again, flagged REPLAY. Transmission is bounded by the partner's credit
//! (FLOW) and by a local window, so memory is bounded on both ends.
//!
//! Sequence numbers on the wire and the numbers the client sees are the same until the session
//! switches to a backup partner: then [`SendStream::rebase`] renumbers the unacknowledged
//! messages 1.. for the new partner (whose receive stream starts fresh) while each keeps the
//! number its client was given, so completions still name what the client sent.
//!
//! Receiver ([`RecvStream`]): messages are delivered strictly in sequence order; early ones wait
//! in a reorder buffer bounded by the window; anything at or below the delivered mark is a
//! duplicate and dropped. Return codes of recent synchronous messages are remembered so a
//! replayed duplicate is answered again (its first ACK may have died with a link).
//!
//! Layout: `send` holds the sending half, `recv` the receiving half.

mod recv;
mod send;

pub use recv::{Delivery, RecvError, RecvOutcome, RecvStream, ReplyError};
pub use send::{SendCompletion, SendModel, SendStream};
