//! An established session fed arbitrary frames (and arbitrary local commands in between).
//!
//! Two sessions, `a` (dialer) and `b` (acceptor), are brought up over one in-memory link with
//! clients on both sides and some traffic left in flight. The fuzzer's bytes are then read as a
//! program: inject a crafted frame into `a` on a live or dead link, deliver one queued frame
//! between the two, issue a client command on `a`, add or kill a link, let time pass. After every
//! step all of `a`'s outputs are drained. Nothing may panic; protocol errors are fine.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::control::{NodeInfo, TransportCap};
use peercm_cm_proto::frame::{Flags, Frame, MsgType};
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, LatencyClass, LinkId, Session, SessionConfig, SessionState,
};
use peercm_cm_proto::stream::SendModel;
use peercm_cm_proto::testkit::{arbitrary_frame, seq_like, FrameSpace, Unstructured};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

const NAMES: [&str; 4] = ["mirror", "heartbeat", "bulk", "bad name"];
const MODELS: [SendModel; 3] = [SendModel::Sync, SendModel::Async, SendModel::Local];

/// Reads the fuzzer's bytes (through `arbitrary`'s `Unstructured`); yields zeros once they run
/// out.
struct Input<'a>(Unstructured<'a>);

impl Input<'_> {
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        self.0.arbitrary().unwrap_or(0)
    }
    fn u32(&mut self) -> u32 {
        self.0.arbitrary().unwrap_or(0)
    }
    fn bytes(&mut self, max: usize) -> Bytes {
        let n = usize::from(self.u8()).min(max).min(self.0.len());
        Bytes::copy_from_slice(self.0.bytes(n).unwrap_or_default())
    }
    /// A sequence-like number: mostly small or near a boundary, sometimes anything.
    fn seq(&mut self, near: u64) -> u64 {
        seq_like(&mut self.0, near).unwrap_or(0)
    }
}

fn node(name: &str, instance: u64) -> NodeInfo {
    NodeInfo {
        node_id: name.into(),
        instance,
        capabilities: vec![TransportCap::Tcp],
        max_payload_bytes: 1 << 20,
    }
}

fn spec(model: SendModel) -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 10,
        latency: LatencyClass::Normal,
        model,
    }
}

struct World {
    a: Session,
    b: Session,
    now: Instant,
    /// Per link: frames a -> b, frames b -> a.
    links: BTreeMap<LinkId, (VecDeque<Frame>, VecDeque<Frame>)>,
    next_link: LinkId,
    b_instance: u64,
    /// Sync messages delivered to a's clients (candidates for replies).
    a_pending_replies: Vec<(ClientId, u64)>,
    a_delivered: Vec<(ClientId, u64)>,
}

impl World {
    fn new() -> Self {
        let cfg = SessionConfig {
            window: 4,
            flow_high_water: 6,
            flow_low_water: 2,
            max_payload_bytes: 64,
            heartbeat_interval: Duration::from_millis(100),
            link_timeout: Duration::from_millis(500),
            hold_on_partner_loss: None,
            ..SessionConfig::default()
        };
        let mut w = World {
            a: Session::new(cfg.clone(), Role::Dialer),
            b: Session::new(cfg, Role::Acceptor),
            now: Instant::now(),
            links: BTreeMap::new(),
            next_link: LinkId::new(1),
            b_instance: 2,
            a_pending_replies: Vec::new(),
            a_delivered: Vec::new(),
        };
        for (i, name) in NAMES[..3].iter().enumerate() {
            let model = MODELS[i];
            let ca = w.a.register(name, spec(model)).expect("valid name");
            let cb = w.b.register(name, spec(model)).expect("valid name");
            if i != 1 {
                let _ = w.a.connect(ca);
            } else {
                let _ = w.b.connect(cb);
            }
        }
        w.add_link();
        w.pump(10_000);
        assert_eq!(w.a.state(), SessionState::Up, "setup brings the session up");
        // Some traffic both ways, partly delivered, so streams have state.
        for i in 0..6u8 {
            for id in (1..=3).map(ClientId::new) {
                let _ =
                    w.a.send(id, Bytes::from(vec![i; 3]), MODELS[usize::from(i) % 3]);
                let _ =
                    w.b.send(id, Bytes::from(vec![i; 5]), MODELS[usize::from(i) % 3]);
            }
            w.pump(usize::from(i) * 3);
        }
        w
    }

    fn add_link(&mut self) -> LinkId {
        let id = self.next_link;
        self.next_link = LinkId::new(self.next_link.get() + 1);
        self.links.insert(id, Default::default());
        self.a
            .handle_link_up(id, node("b", self.b_instance), self.now);
        self.b.handle_link_up(id, node("a", 1), self.now);
        id
    }

    fn kill_link(&mut self, id: LinkId) {
        if self.links.remove(&id).is_some() {
            self.a.handle_link_down(id, self.now);
            self.b.handle_link_down(id, self.now);
        }
    }

    /// Drains every output of both sessions, bounded so a runaway output loop is a failure.
    fn flush(&mut self) {
        for (s, to_b) in [(&mut self.a, true), (&mut self.b, false)] {
            let mut n = 0;
            while let Some(t) = s.poll_transmit(self.now) {
                n += 1;
                assert!(n < 100_000, "poll_transmit never runs dry");
                let bytes = t.frame.encoded_len() as u64;
                if let Some(q) = self.links.get_mut(&t.link) {
                    if to_b {
                        q.0.push_back(t.frame);
                    } else {
                        q.1.push_back(t.frame);
                    }
                }
                let done: Vec<_> = t.local_done.into_iter().collect();
                s.handle_written(t.link, bytes, &done);
            }
            let _ = s.poll_timeout();
        }
        let mut dead = Vec::new();
        while let Some(l) = self.a.poll_close_link() {
            dead.push(l);
        }
        while let Some(l) = self.b.poll_close_link() {
            dead.push(l);
        }
        for l in dead {
            self.kill_link(l);
        }
        let mut n = 0;
        while let Some((id, ev)) = self.a.poll_event() {
            n += 1;
            assert!(n < 1_000_000, "poll_event never runs dry");
            if let ClientEvent::Data {
                seq, reply_needed, ..
            } = ev
            {
                self.a_delivered.push((id, seq));
                if reply_needed {
                    self.a_pending_replies.push((id, seq));
                }
            }
        }
        while let Some((id, ev)) = self.b.poll_event() {
            if let ClientEvent::Data {
                seq,
                reply_needed: true,
                ..
            } = ev
            {
                let _ = self.b.reply(id, seq, 0);
            }
            if let ClientEvent::Data { seq, .. } = ev {
                self.b.consumed(id, seq);
            }
        }
    }

    /// Delivers up to `n` queued frames in FIFO order per link, lowest link first.
    fn pump(&mut self, n: usize) {
        for _ in 0..n {
            self.flush();
            if !self.deliver(0) {
                break;
            }
        }
        self.flush();
    }

    /// Delivers one queued frame; `pick` chooses among the non-empty directions.
    fn deliver(&mut self, pick: u8) -> bool {
        let mut cands = Vec::new();
        for (id, q) in &self.links {
            if !q.0.is_empty() {
                cands.push((*id, true));
            }
            if !q.1.is_empty() {
                cands.push((*id, false));
            }
        }
        if cands.is_empty() {
            return false;
        }
        let (id, to_b) = cands[usize::from(pick) % cands.len()];
        let Some(q) = self.links.get_mut(&id) else {
            return false;
        };
        let f = if to_b {
            q.0.pop_front()
        } else {
            q.1.pop_front()
        };
        if let Some(f) = f {
            let res = if to_b {
                self.b.handle_frame(id, f, self.now)
            } else {
                self.a.handle_frame(id, f, self.now)
            };
            if res.is_err() {
                // The runtime closes a link on a protocol violation.
                self.kill_link(id);
            }
        }
        true
    }

    fn link_for(&self, sel: u8) -> LinkId {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        if ids.is_empty() || sel == 255 {
            // A link nobody knows (late frame from a closed link).
            return LinkId::new(1000 + u64::from(sel));
        }
        ids[usize::from(sel) % ids.len()]
    }

    /// A crafted frame for `a`, from the shared generator: ids and names that `b` uses (and
    /// one invalid name), payloads up to 96 bytes.
    fn crafted(&self, inp: &mut Input) -> Frame {
        let space = FrameSpace {
            max_payload: 96,
            // Clients are registered in the same order on both sides.
            client_ids: &[1, 2, 3],
            client_names: &NAMES,
        };
        arbitrary_frame(&mut inp.0, &space).unwrap_or_else(|_| {
            Frame::new(MsgType::Heartbeat, Flags::empty(), 0, 0, 0, Bytes::new())
        })
    }

    fn step(&mut self, inp: &mut Input) {
        match inp.u8() % 12 {
            0..=3 => {
                let link = self.link_for(inp.u8());
                let f = self.crafted(inp);
                let _ = self.a.handle_frame(link, f, self.now);
            }
            4 | 5 => {
                let pick = inp.u8();
                self.deliver(pick);
            }
            6 => {
                let id = ClientId::new(u32::from(inp.u8() % 5));
                let model = MODELS[usize::from(inp.u8()) % 3];
                let payload = inp.bytes(80);
                let _ = self.a.send(id, payload, model);
            }
            7 => {
                let (id, seq) = if !self.a_pending_replies.is_empty() && inp.u8() % 4 != 0 {
                    let i = usize::from(inp.u8()) % self.a_pending_replies.len();
                    self.a_pending_replies.swap_remove(i)
                } else {
                    (ClientId::new(u32::from(inp.u8() % 5)), inp.seq(3))
                };
                let _ = self.a.reply(id, seq, inp.u32() as i32);
            }
            8 => {
                let (id, seq) = match self.a_delivered.last() {
                    Some(&(id, seq)) if inp.u8() % 2 == 0 => (id, seq),
                    _ => (ClientId::new(u32::from(inp.u8() % 5)), inp.seq(3)),
                };
                self.a.consumed(id, seq);
            }
            9 => match inp.u8() % 4 {
                0 => {
                    let l = self.link_for(inp.u8());
                    self.kill_link(l);
                }
                1 => {
                    // b restarts: a sees a new instance on the next link.
                    self.b_instance += 1;
                    self.add_link();
                }
                _ => {
                    self.add_link();
                }
            },
            10 => {
                let ms = u64::from(inp.u8()) * 4;
                self.now += Duration::from_millis(ms);
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
            }
            _ => {
                let name = NAMES[usize::from(inp.u8()) % NAMES.len()];
                let id = ClientId::new(u32::from(inp.u8() % 6));
                let _ = match inp.u8() % 4 {
                    0 => self.a.register(name, spec(SendModel::Async)).map(|_| ()),
                    1 => self.a.connect(id).map(|_| ()),
                    2 => self.a.close(id, false).map(|_| ()),
                    _ => self.a.close(id, true).map(|_| ()),
                };
            }
        }
        self.flush();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut w = World::new();
    let mut inp = Input(Unstructured::new(data));
    let mut steps = 0;
    while !inp.done() && steps < 4096 {
        w.step(&mut inp);
        steps += 1;
    }
    // Whatever happened, the pair can still be driven to quiescence without panicking.
    w.pump(100_000);
    let _ = w.a.stats();
});
