//! The outgoing queue of one link, with two lanes: control frames overtake bulk data.
//!
//! A link busy with large DATA frames (64 KiB each, hundreds queued behind a slow socket or a
//! closed credit window) must still get its HEARTBEAT out, or the partner judges the link
//! silent and closes it while it is delivering. So HEARTBEAT, ACK, NACK and FLOW go to the
//! control lane, which is always taken first; everything else (DATA, and the frames whose order
//! relative to DATA matters: RESET, RESET-ACK, READY, CLIENT-UP/DOWN, TRANSPORT, REGION, WRITE) stays in the
//! bulk lane, first in, first out. Both transports use it: the TCP writer
//! (`peercm-fallback-tcp`) and the RDMA link's credit queue (`peercm-cm-rdma-link`).
//!
//! Overtaking is safe for the control frames: ACKs are cumulative (an older one arriving later
//! changes nothing), a NACK or a return code names its message, FLOW grants absolute credit,
//! and a HEARTBEAT only proves the link alive (its epoch is read like a RESET's, see
//! docs/protocol.md).

use crate::frame::MsgType;
use std::collections::VecDeque;

/// Which lane a frame waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Liveness and completions (HEARTBEAT, ACK, NACK, FLOW): sent before any bulk frame.
    Control,
    /// Everything else, in order.
    Bulk,
}

impl Lane {
    /// The lane of a frame of this type.
    pub fn of(msg_type: MsgType) -> Lane {
        match msg_type {
            MsgType::Heartbeat | MsgType::Ack | MsgType::Nack | MsgType::Flow => Lane::Control,
            _ => Lane::Bulk,
        }
    }
}

/// A two-lane FIFO: [`LinkQueue::pop`] returns the oldest control item if there is one, else
/// the oldest bulk item.
#[derive(Debug)]
pub struct LinkQueue<T> {
    control: VecDeque<T>,
    bulk: VecDeque<T>,
}

impl<T> Default for LinkQueue<T> {
    fn default() -> Self {
        LinkQueue {
            control: VecDeque::new(),
            bulk: VecDeque::new(),
        }
    }
}

impl<T> LinkQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an item at the back of its lane.
    pub fn push(&mut self, lane: Lane, item: T) {
        self.lane_mut(lane).push_back(item);
    }

    /// Puts an item back at the front of its lane (it was popped but could not be sent yet).
    pub fn push_front(&mut self, lane: Lane, item: T) {
        self.lane_mut(lane).push_front(item);
    }

    /// The next item to send, control first, with its lane.
    pub fn pop(&mut self) -> Option<(Lane, T)> {
        if let Some(item) = self.control.pop_front() {
            return Some((Lane::Control, item));
        }
        self.bulk.pop_front().map(|item| (Lane::Bulk, item))
    }

    /// Items queued in both lanes.
    pub fn len(&self) -> usize {
        self.control.len() + self.bulk.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.bulk.is_empty()
    }

    /// Drops everything queued; returns how many items were dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        self.control.clear();
        self.bulk.clear();
        n
    }

    fn lane_mut(&mut self, lane: Lane) -> &mut VecDeque<T> {
        match lane {
            Lane::Control => &mut self.control,
            Lane::Bulk => &mut self.bulk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_overtakes_bulk_and_each_lane_keeps_its_order() {
        let mut q = LinkQueue::new();
        q.push(Lane::of(MsgType::Data), "d1");
        q.push(Lane::of(MsgType::Data), "d2");
        q.push(Lane::of(MsgType::Reset), "reset");
        q.push(Lane::of(MsgType::Heartbeat), "hb");
        q.push(Lane::of(MsgType::Ack), "ack");
        assert_eq!(q.len(), 5);
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, i)| i)).collect();
        assert_eq!(order, ["hb", "ack", "d1", "d2", "reset"]);
        assert!(q.is_empty());
    }

    #[test]
    fn an_item_put_back_is_next_in_its_lane() {
        let mut q = LinkQueue::new();
        q.push(Lane::Bulk, 1);
        q.push(Lane::Bulk, 2);
        let (lane, first) = q.pop().unwrap();
        q.push_front(lane, first);
        assert_eq!(q.pop(), Some((Lane::Bulk, 1)));
        assert_eq!(q.clear(), 1);
    }

    #[test]
    fn lanes_by_type() {
        for t in [
            MsgType::Heartbeat,
            MsgType::Ack,
            MsgType::Nack,
            MsgType::Flow,
        ] {
            assert_eq!(Lane::of(t), Lane::Control, "{t:?}");
        }
        for t in [
            MsgType::Data,
            MsgType::Reset,
            MsgType::ResetAck,
            MsgType::Ready,
            MsgType::ClientUp,
            MsgType::ClientDown,
            MsgType::Transport,
            MsgType::Region,
            MsgType::Write,
        ] {
            assert_eq!(Lane::of(t), Lane::Bulk, "{t:?}");
        }
    }
}
