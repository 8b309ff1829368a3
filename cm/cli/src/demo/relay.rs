//! A TCP relay between the demo's two nodes, so that the demo can break a connection from the
//! outside, as a network fault would, without any fault-injection hook in the node: node-a dials
//! the relay, the relay dials node-b for every connection it accepts and copies the bytes both
//! ways; cutting a connection closes both of its sockets at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A relayed connection that was cut.
#[derive(Debug, Clone, Copy)]
pub struct CutConnection {
    /// Which connection, counting accepted connections from 1.
    pub number: u64,
    /// The dialer's end (node-a's address).
    pub from: SocketAddr,
    /// The relay's end towards the target (the address node-b saw).
    pub to: SocketAddr,
}

/// A relayed connection still copying.
struct Live {
    from: SocketAddr,
    to: SocketAddr,
    cut: oneshot::Sender<()>,
}

/// Live connections by number.
type Table = Arc<Mutex<BTreeMap<u64, Live>>>;

fn lock(table: &Table) -> MutexGuard<'_, BTreeMap<u64, Live>> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running relay. Dropping it stops accepting and closes every relayed connection.
pub struct Relay {
    addr: SocketAddr,
    live: Table,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on an ephemeral port of 127.0.0.1 and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let live = Table::default();
        let task = tokio::spawn(accept(listener, target, live.clone()));
        Ok(Relay { addr, live, task })
    }

    /// The address to dial instead of the target.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the oldest live connection, closing both of its sockets. `None` if none is live.
    pub fn cut_one(&self) -> Option<CutConnection> {
        let (number, live) = lock(&self.live).pop_first()?;
        // The connection's task closes both sockets when told, or has already ended.
        let _ = live.cut.send(());
        Some(CutConnection {
            number,
            from: live.from,
            to: live.to,
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its set of connection tasks, which aborts them.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, live: Table) {
    let mut connections = JoinSet::new();
    let mut accepted = 0u64;
    loop {
        while connections.try_join_next().is_some() {}
        let (inbound, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "relay: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        accepted += 1;
        connections.spawn(relay(accepted, inbound, from, target, live.clone()));
    }
}

/// Relays one connection until either side closes it or it is cut; then closes both sockets.
async fn relay(
    number: u64,
    mut inbound: TcpStream,
    from: SocketAddr,
    target: SocketAddr,
    live: Table,
) {
    let mut outbound = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            // Dropping `inbound` closes it: the dialer sees its connection fail and redials.
            tracing::warn!(%target, error = %e, "relay: cannot reach the target");
            return;
        }
    };
    let to = outbound.local_addr().unwrap_or(target);
    let (cut, cut_rx) = oneshot::channel();
    lock(&live).insert(number, Live { from, to, cut });
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut_rx => {}
    }
    lock(&live).remove(&number);
    // Both streams are dropped here: both sockets close.
}
