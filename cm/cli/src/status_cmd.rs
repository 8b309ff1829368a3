//! `peercm status --socket PATH [--json]`: asks a running `peercm node` (its `status_socket`)
//! for its state and prints it: partner and epoch, why it is on TCP if it is, every
//! interconnect with capacity, utilization and the clients placed on it, the clients, and the
//! latest events (migrations, switches, fallbacks) with timestamps. Also serves that socket
//! for `peercm node`.

use anyhow::{bail, Context};
use clap::Args;
use peercm_cm_manager::Node;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest status document accepted from a node.
const MAX_STATUS_BYTES: u64 = 4 << 20;
/// Timeline entries printed.
const TIMELINE_SHOWN: usize = 20;

/// Options of `peercm status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node's status socket (`status_socket` in its configuration).
    #[arg(long, short)]
    pub socket: PathBuf,
    /// Print the raw JSON document instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Prints the node's status.
pub async fn run(args: StatusArgs) -> anyhow::Result<bool> {
    let mut stream = tokio::net::UnixStream::connect(&args.socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach a peercm node at {} (is `peercm node` running with status_socket set?)",
                args.socket.display()
            )
        })?;
    let mut text = String::new();
    (&mut stream)
        .take(MAX_STATUS_BYTES)
        .read_to_string(&mut text)
        .await
        .context("reading the status")?;
    let doc: Value = serde_json::from_str(&text).context("the node sent malformed status")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&doc));
    }
    Ok(true)
}

/// Serves `node`'s status on a Unix socket at `path` until the task is dropped: one JSON
/// document per connection. A stale socket file from an earlier run is replaced.
pub async fn serve(node: Arc<Node>, path: &Path) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale status socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the status socket {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let body = match node.status().await {
                    Ok(s) => serde_json::to_vec(&s).unwrap_or_default(),
                    Err(e) => format!("{{\"error\":{:?}}}", e.to_string()).into_bytes(),
                };
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// The human summary of a status document.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    if let Some(err) = doc.get("error").and_then(Value::as_str) {
        let _ = writeln!(out, "node error: {err}");
        return out;
    }
    let _ = writeln!(
        out,
        "node {}  partner {}  session {}  epoch {}",
        s(doc, "node_id"),
        s(doc, "peer"),
        s(doc, "session"),
        doc.get("epoch").and_then(Value::as_u64).unwrap_or(0)
    );
    // Reasons are {"code", "message"} objects (peercm_cm_manager::status).
    let message = |key: &str| doc.get(key)?.get("message")?.as_str();
    match message("fallback") {
        Some(why) => {
            let _ = writeln!(out, "transport: TCP fallback ({why})");
        }
        None => {
            let _ = writeln!(out, "transport: RDMA where placed");
        }
    }
    if let Some(why) = message("verbs_unavailable") {
        let _ = writeln!(out, "verbs: unavailable here: {why}");
    }
    let _ = writeln!(
        out,
        "\n{:<8} {:<16} {:>10} {:>10} {:>12} {:>12} {:>6}  clients",
        "ic", "device", "cap Mb/s", "state", "decl MB/s", "meas MB/s", "util"
    );
    for ic in doc
        .get("interconnects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let clients: Vec<&str> = ic
            .get("clients")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let f = |k: &str| ic.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{:<8} {:<16} {:>10} {:>10} {:>12.1} {:>12.1} {:>5.0}%  {}",
            s(ic, "name"),
            ic.get("device").and_then(Value::as_str).unwrap_or("tcp"),
            ic.get("capacity_mbits_per_s")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            // up / port_down / failing / connecting / idle (older nodes: from `usable`).
            match ic.get("state").and_then(Value::as_str) {
                Some(state) => state,
                None if ic.get("usable").and_then(Value::as_bool) == Some(true) => "up",
                None if ic.get("port_active").and_then(Value::as_bool) == Some(false) => {
                    "port_down"
                }
                None => "idle",
            },
            f("declared_mbytes_per_s"),
            f("measured_mbytes_per_s"),
            (f("utilization") * 100.0).min(9999.0),
            clients.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<14} {:>8}  on",
        "client", "port", "unacked"
    );
    for c in doc
        .get("clients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut on = match c.get("interconnect").and_then(Value::as_u64) {
            None => "-".to_string(),
            Some(0) => "tcp".to_string(),
            Some(r) => format!("rail {r}"),
        };
        if let Some(r) = c.get("own_queue_pair").and_then(Value::as_u64) {
            on.push_str(&format!(" (own queue pair on rail {r})"));
        }
        let _ = writeln!(
            out,
            "{:<20} {:<14} {:>8}  {on}",
            s(c, "name"),
            s(c, "state"),
            c.get("unacked").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    let links = doc
        .get("links")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let _ = writeln!(out, "\nlinks: {links}");
    if let Some(h) = doc.get("handshakes").filter(|h| h.is_object()) {
        let n = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or(0);
        let _ = writeln!(
            out,
            "inbound handshakes: {} pending, {} accepted, {} refused over the caps \
             ({} overall, {} per source), {} failed authentication, {} failed, {} timed out",
            n("pending"),
            n("accepted"),
            n("refused_busy") + n("refused_source_busy"),
            n("refused_busy"),
            n("refused_source_busy"),
            n("auth_failed"),
            n("failed"),
            n("timed_out")
        );
    }
    let timeline: Vec<&Value> = doc
        .get("timeline")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let _ = writeln!(out, "\nlast events:");
    for e in timeline.iter().rev().take(TIMELINE_SHOWN).rev() {
        let _ = writeln!(
            out,
            "  {:>9} ms  {}",
            e.get("at_ms").and_then(Value::as_u64).unwrap_or(0),
            s(e, "what")
        );
    }
    out
}

/// Refuses a status socket path that cannot be a Unix socket address.
pub fn check_socket_path(path: &Path) -> anyhow::Result<()> {
    // sun_path holds 108 bytes including the terminating NUL.
    if path.as_os_str().len() > 107 {
        bail!(
            "status_socket {} is longer than a Unix socket path may be (107 bytes)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_interconnects_clients_and_fallback() {
        let doc = serde_json::json!({
            "node_id": "ctrl-a", "peer": "ctrl-b", "session": "up", "epoch": 3,
            "fallback": {"code": "no_usable_rail",
                         "message": "no RDMA rail is usable (ports down or links failed)"},
            "verbs_unavailable": null,
            "interconnects": [
                {"id": 0, "name": "tcp", "device": null, "capacity_mbits_per_s": 10000, "usable": true,
                 "declared_mbytes_per_s": 2050.0, "measured_mbytes_per_s": 12.5,
                 "utilization": 1.64, "clients": ["mirror", "heartbeat"]},
                {"id": 1, "name": "rail 1", "device": "rxe0 port 1", "capacity_mbits_per_s": 25000,
                 "usable": false, "state": "failing", "declared_mbytes_per_s": 0.0,
                 "measured_mbytes_per_s": 0.0, "utilization": 0.0, "clients": []}
            ],
            "clients": [{"name": "mirror", "state": "Connected", "unacked": 4, "interconnect": 0},
                        {"name": "bulk", "state": "Connected", "unacked": 0, "interconnect": 2,
                         "own_queue_pair": 2}],
            "links": [{"id": 1}],
            "handshakes": {"pending": 2, "accepted": 1, "refused_busy": 5,
                           "refused_source_busy": 7, "auth_failed": 3, "failed": 4,
                           "timed_out": 6},
            "timeline": [{"at_ms": 1200,
                          "event": {"kind": "client_moved", "client": "mirror", "from": 1, "to": 0,
                                    "reason": "FallbackToTcp"},
                          "what": "client mirror: rail 1 -> tcp (FallbackToTcp)"}]
        });
        let text = render(&doc);
        assert!(text.contains("partner ctrl-b"), "{text}");
        assert!(
            text.contains("TCP fallback (no RDMA rail is usable"),
            "{text}"
        );
        assert!(text.contains("rxe0 port 1"), "{text}");
        assert!(
            text.contains("failing"),
            "a black-holed rail shows failing: {text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("tcp ") && l.contains(" up ")),
            "without a state (an older node), usable gives it: {text}"
        );
        assert!(text.contains("mirror, heartbeat"), "{text}");
        assert!(text.contains("164%"), "{text}");
        assert!(text.contains("FallbackToTcp"), "{text}");
        assert!(
            text.contains("inbound handshakes: 2 pending, 1 accepted, 12 refused over the caps (5 overall, 7 per source), 3 failed authentication, 4 failed, 6 timed out"),
            "{text}"
        );
        assert!(text.contains("mirror               Connected"), "{text}");
        assert!(text.contains("rail 2 (own queue pair on rail 2)"), "{text}");
    }

    #[test]
    fn renders_a_node_error() {
        let doc = serde_json::json!({"error": "the node has stopped"});
        assert_eq!(render(&doc), "node error: the node has stopped\n");
    }

    #[test]
    fn refuses_overlong_socket_paths() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert!(check_socket_path(&long).is_err());
        assert!(check_socket_path(Path::new("/run/peercm.sock")).is_ok());
    }
}
