//! The exchange connection between the two sides: one TCP connection over the management link
//! (so cutting a cable never cuts it) carrying length-prefixed frames
//! `[len u32 BE][kind u8][scenario index u32 BE][payload]`, `len` counting kind + index +
//! payload. Control frames keep the sides in lockstep; data frames carry a scenario's own
//! messages (see `super::exchange`). Also the connect/accept with retries.

use super::args::Args;
use super::stamp;
use crate::abort::AbortFile;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The exchange protocol's name, in `hello`.
pub const PROTO: &str = "verbs-lane-1";
const MAX_FRAME: usize = 64 << 20;
/// A control frame (`hello`, `begin`, `end`, `bye`).
pub const KIND_CTL: u8 = 0;
/// A scenario's data frame.
pub const KIND_DATA: u8 = 1;

pub struct Frame {
    pub kind: u8,
    pub index: u32,
    pub payload: Vec<u8>,
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Control messages read while waiting for something else, in arrival order.
    pub pending: VecDeque<String>,
    abort: AbortFile,
    broken: Option<String>,
}

impl Conn {
    fn new(stream: TcpStream, abort: AbortFile) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            abort,
            broken: None,
        })
    }

    pub fn write_frame(&mut self, kind: u8, index: u32, payload: &[u8]) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone()));
        }
        let len = payload.len() + 5;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes is too large", payload.len()),
            ));
        }
        let mut out = Vec::with_capacity(len + 4);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(payload);
        let r = self
            .stream
            .write_all(&out)
            .and_then(|()| self.stream.flush());
        if let Err(e) = &r {
            self.broken = Some(format!("exchange connection lost: {e}"));
        }
        r
    }

    pub fn send_ctl(&mut self, msg: &str) -> io::Result<()> {
        self.write_frame(KIND_CTL, 0, msg.as_bytes())
    }

    fn parse_buffered(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if !(5..=MAX_FRAME).contains(&len) {
            let why = format!("exchange protocol error: frame length {len}");
            self.broken = Some(why.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = self.buf[4];
        let index = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]);
        let payload = self.buf[9..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(Frame {
            kind,
            index,
            payload,
        }))
    }

    /// The next frame, waiting until `deadline`. Partial frames stay buffered across timeouts.
    /// Data already sent by the peer is always read before a timeout or the abort file counts.
    pub fn read_frame(&mut self, deadline: Instant) -> io::Result<Frame> {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.parse_buffered()? {
                return Ok(f);
            }
            if let Some(why) = &self.broken {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone()));
            }
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(250));
            self.stream.set_read_timeout(Some(slice))?;
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    let why = "exchange connection lost: the peer closed it".to_string();
                    self.broken = Some(why.clone());
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
                    }
                    if self.abort.is_set() {
                        return Err(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "the lane aborted (abort file exists)",
                        ));
                    }
                }
                Err(e) => {
                    self.broken = Some(format!("exchange connection lost: {e}"));
                    return Err(e);
                }
            }
        }
    }

    /// Waits for a control message starting with `prefix` (pending ones first); data frames
    /// met on the way are stale (from a finished scenario) and dropped.
    pub fn wait_ctl(&mut self, prefix: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        if let Some(pos) = self.pending.iter().position(|m| m.starts_with(prefix)) {
            if let Some(m) = self.pending.remove(pos) {
                return Ok(m);
            }
        }
        loop {
            let f = self.read_frame(deadline).map_err(|e| {
                io::Error::new(e.kind(), format!("waiting for the peer's {prefix:?}: {e}"))
            })?;
            if f.kind != KIND_CTL {
                continue;
            }
            let m = String::from_utf8_lossy(&f.payload).into_owned();
            if m.starts_with(prefix) {
                return Ok(m);
            }
            self.pending.push_back(m);
        }
    }
}

/// The server accepts the client on `--listen`; the client connects to `--peer`, retrying for
/// `--connect-timeout` (the other VM may boot later).
pub fn connect(args: &Args, t0: Instant) -> Result<Conn, String> {
    let deadline = Instant::now() + args.connect_timeout;
    let abort = AbortFile(args.abort_file.clone());
    if let Some(addr) = args.listen {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        eprintln!("[verbs-lane {}] listening on {addr}", stamp(t0));
        loop {
            match listener.accept() {
                Ok((stream, from)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| format!("accepted socket: {e}"))?;
                    eprintln!("[verbs-lane {}] client connected from {from}", stamp(t0));
                    return Conn::new(stream, abort).map_err(|e| format!("accepted socket: {e}"));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("accept on {addr}: {e}")),
            }
            if abort.is_set() {
                return Err("the lane aborted while waiting for the client".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no client connected to {addr} within {} s",
                    args.connect_timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let addr = args.peer.ok_or("no --peer")?;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let last = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => {
                eprintln!(
                    "[verbs-lane {}] connected to {addr} (attempt {tries})",
                    stamp(t0)
                );
                return Conn::new(stream, abort).map_err(|e| format!("socket to {addr}: {e}"));
            }
            Err(e) => e,
        };
        if abort.is_set() {
            return Err("the lane aborted while connecting to the server".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cannot connect to the server at {addr} within {} s ({tries} attempts, last: {last})",
                args.connect_timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
