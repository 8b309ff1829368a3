//! `peercm node --config FILE`: one node as a long-lived process.
//!
//! It registers the clients listed in the configuration and answers for them: every message is
//! counted and synchronous ones are answered with code 0, so two `peercm node` processes (or one
//! and a test harness) can exercise a real pair. Stops on Ctrl-C or SIGTERM.

use anyhow::{bail, Context};
use clap::Args;
use peercm_cm_manager::{ClientEvent, ClusterSecret, Node, NodeConfig};
use std::path::PathBuf;

/// Options of `peercm node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's TOML configuration.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Run without a cluster secret (test setups only: any peer that is also insecure is
    /// accepted).
    #[arg(long)]
    pub insecure: bool,
}

/// Runs the node until interrupted.
pub async fn run(args: NodeArgs) -> anyhow::Result<bool> {
    let cfg = NodeConfig::load(&args.config)?;
    let secret = match (&cfg.secret_file, args.insecure) {
        (Some(path), _) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading secret_file {}", path.display()))?;
            ClusterSecret::new(&bytes).with_context(|| format!("secret_file {}", path.display()))?
        }
        (None, true) => {
            tracing::warn!(
                "running without a cluster secret (--insecure): peers are not authenticated"
            );
            ClusterSecret::insecure()
        }
        (None, false) => bail!(
            "no cluster secret: set secret_file in {} or pass --insecure",
            args.config.display()
        ),
    };
    let dials = cfg.peer.is_some();
    let clients = cfg.clients.clone();
    let status_socket = cfg.status_socket.clone();
    if let Some(path) = &status_socket {
        crate::status_cmd::check_socket_path(path)?;
    }
    let node = std::sync::Arc::new(Node::start(cfg, secret).await?);
    if let Some(addr) = node.local_addr() {
        println!("listening on {addr}");
    }
    let _status_task = match &status_socket {
        Some(path) => {
            let task = crate::status_cmd::serve(node.clone(), path).await?;
            println!("status on {}", path.display());
            Some(task)
        }
        None => None,
    };
    for c in clients {
        let mut handle = node.register(&c.name, c.spec()).await?;
        for r in &c.regions {
            let info = handle.register_region(&r.name, r.len_bytes).await?;
            println!(
                "client {} region {} ({} bytes) at {}",
                c.name,
                r.name,
                r.len_bytes,
                info.path.display()
            );
        }
        if c.own_queue_pair {
            handle.request_queue_pair().await?;
            println!("client {} asks for a queue pair of its own", c.name);
        }
        if dials {
            handle.connect().await?;
        }
        tokio::spawn(async move {
            let mut received = 0u64;
            while let Some(ev) = handle.next_event().await {
                match ev {
                    ClientEvent::Data {
                        seq, reply_needed, ..
                    } => {
                        received += 1;
                        if reply_needed {
                            let _ = handle.reply(seq, 0).await;
                        }
                    }
                    other => {
                        tracing::info!(client = handle.name(), received, event = ?other, "client event")
                    }
                }
            }
        });
    }
    wait_for_signal().await;
    let status = node.status().await?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    if let Some(path) = &status_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(true)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
