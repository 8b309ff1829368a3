//! [`Node`]: a running connection manager, and the handle an application holds on it.

use crate::client::ClientHandle;
use crate::config::NodeConfig;
use crate::error::CmError;
use crate::manager::{local_node_info, Command, Manager};
use crate::rails::VerbsSource;
use crate::status::NodeStatus;
use peercm_cm_proto::auth::ClusterSecret;
use peercm_cm_proto::handshake::HandshakeConfig;
use peercm_cm_proto::session::ClientSpec;
#[cfg(feature = "fault-injection")]
use peercm_cm_proto::session::LinkId;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A running node. Dropping it (and every [`ClientHandle`]) stops the manager.
#[derive(Debug)]
pub struct Node {
    node_id: String,
    cmd: mpsc::UnboundedSender<Command>,
    local_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Node {
    /// Validates `cfg`, binds the listener (if any) and starts the manager task, with RDMA
    /// through rdma-core when this host has it (TCP otherwise).
    pub async fn start(cfg: NodeConfig, secret: ClusterSecret) -> Result<Node, CmError> {
        Node::start_with_verbs(cfg, secret, VerbsSource::Real).await
    }

    /// Like [`Node::start`], with the RDMA devices taken from `verbs` (a simulated fabric's
    /// node in tests, or none).
    pub async fn start_with_verbs(
        cfg: NodeConfig,
        secret: ClusterSecret,
        verbs: VerbsSource,
    ) -> Result<Node, CmError> {
        cfg.validate()?;
        let listener = match cfg.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|error| CmError::Bind {
                        addr: addr.to_string(),
                        error,
                    })?,
            ),
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let instance = rand::random::<u64>();
        let handshake = HandshakeConfig {
            cluster_id: cfg.cluster_id.clone(),
            secret,
            node: local_node_info(&cfg, instance),
        };
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let node_id = cfg.node_id.clone();
        let span = tracing::info_span!("node", id = %node_id);
        let task = {
            let _enter = span.enter();
            let manager = Manager::new(cfg, handshake, listener, cmd_rx, verbs);
            tokio::spawn(manager.run().instrument(span.clone()))
        };
        Ok(Node {
            node_id,
            cmd,
            local_addr,
            task,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CmError>>) -> Command,
    ) -> Result<T, CmError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).map_err(|_| CmError::Stopped)?;
        rx.await.map_err(|_| CmError::Stopped)?
    }

    /// Registers a client (port INITIALIZED). The partner must register the same name.
    pub async fn register(&self, name: &str, spec: ClientSpec) -> Result<ClientHandle, CmError> {
        let (id, events, report) = self
            .ask(|reply| Command::Register {
                name: name.to_string(),
                spec,
                reply,
            })
            .await?;
        Ok(ClientHandle::new(
            id,
            name.to_string(),
            spec,
            self.cmd.clone(),
            events,
            report,
        ))
    }

    /// A snapshot of the node.
    pub async fn status(&self) -> Result<NodeStatus, CmError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Fault injection (cargo feature `fault-injection`, for tests): closes one link (the given
    /// one, or the oldest TCP connection). Returns which.
    #[cfg(feature = "fault-injection")]
    pub async fn kill_link(&self, link: Option<LinkId>) -> Result<Option<LinkId>, CmError> {
        self.ask(|reply| Command::KillLink { link, reply }).await
    }

    /// Switches to the next partner in the configured order (see
    /// [`ClientHandle::switch_peer`]). Returns the new partner's address.
    pub async fn switch_peer(&self) -> Result<String, CmError> {
        self.ask(|reply| Command::SwitchPeer { reply }).await
    }

    /// Fault injection (cargo feature `fault-injection`, for tests): the manager processes
    /// nothing for `duration`, as a hung process would (its links go silent, inbound handshakes
    /// wait unanswered; its RDMA threads keep running).
    #[cfg(feature = "fault-injection")]
    pub async fn freeze(&self, duration: std::time::Duration) -> Result<(), CmError> {
        self.ask(|reply| Command::Freeze {
            duration,
            readers: false,
            reply,
        })
        .await
    }

    /// Fault injection (cargo feature `fault-injection`, for tests): the whole node stalls for
    /// `duration`, as a process descheduled by a loaded host would: the manager processes
    /// nothing and the TCP link readers read nothing (each holds the frame it has), then both
    /// resume at once. The partner's frames wait in the sockets meanwhile.
    #[cfg(feature = "fault-injection")]
    pub async fn stall(&self, duration: std::time::Duration) -> Result<(), CmError> {
        self.ask(|reply| Command::Freeze {
            duration,
            readers: true,
            reply,
        })
        .await
    }

    /// Stops the node at once: every link is dropped, as if the process died.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}
