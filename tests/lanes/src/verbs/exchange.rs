//! The [`Exchange`] one scenario sees: data frames on the [`Conn`] tagged with the scenario's
//! index, so a message left over from a failed scenario can never reach the next one. When the
//! peer ends the scenario while this side still waits in `recv`, the wait fails at once.

use super::conn::{Conn, KIND_DATA};
use peercm_verbs_shim::scenarios::Exchange;
use std::io;
use std::time::{Duration, Instant};

pub struct ScenarioExchange {
    pub conn: Conn,
    pub index: u32,
    /// The peer's `end` message, once seen: the peer finished this scenario.
    pub peer_end: Option<String>,
}

impl Exchange for ScenarioExchange {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.conn.write_frame(KIND_DATA, self.index, msg)
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        if let Some(end) = &self.peer_end {
            return Err(peer_ended_error(end));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.conn.read_frame(deadline)?;
            if f.kind == KIND_DATA {
                if f.index == self.index {
                    return Ok(f.payload);
                }
                continue; // stale data from an earlier scenario
            }
            let m = String::from_utf8_lossy(&f.payload).into_owned();
            let is_end = m.starts_with(&format!("end {} ", self.index));
            self.conn.pending.push_back(m.clone());
            if is_end {
                self.peer_end = Some(m.clone());
                return Err(peer_ended_error(&m));
            }
        }
    }
}

fn peer_ended_error(end_msg: &str) -> io::Error {
    // "end <i> <name> <PASS|FAIL> <text>"
    let rest: Vec<&str> = end_msg.splitn(4, ' ').collect();
    let verdict = rest.get(3).copied().unwrap_or("?");
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!(
            "the peer side already finished this scenario ({verdict}) and will send nothing more"
        ),
    )
}
