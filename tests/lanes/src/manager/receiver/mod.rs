//! The receiving roles: the partner (node b on n2, with the same two HCAs) and the backup (n3,
//! no RDMA: `node-c-nordma` and `node-c-backup`). They start their nodes, announce themselves
//! in the sync dir, check every record they get ([`checks`]) and serve the leader's requests
//! (`report`, `crash-at <index>`, `resync`, `exit`) until it says exit or is gone.

mod checks;
mod region;

use super::args::{Args, Hca, Role};
use super::clients::{client_specs, MIRROR};
use super::devices::{check_devices, cpu_ticks, describe_no_rdma};
use super::node::{node_config, secret, with_regions};
use super::sync::SyncDir;
use super::watch::StallProbe;
use super::{lock, secs};
use crate::cli::EXIT_NOT_RUN;
use checks::{resync, spawn_receiver, RecvHooks, RecvStats, Stats};
use peercm_cm_manager::{Node, VerbsSource};
use region::{parse_cmd, CmdTx};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One receiving node and what its clients got.
struct Receiver {
    node: Arc<Node>,
    stats: Stats,
    probe: StallProbe,
    /// The mirror client's task: region requests and the zombie writer.
    mirror: CmdTx,
}

async fn start_receiver(
    id: &str,
    listen: SocketAddr,
    hcas: &[Hca],
    hooks: RecvHooks,
    region_dir: Option<&std::path::Path>,
) -> Result<Receiver, String> {
    let mut cfg = node_config(id, hcas);
    cfg.listen = Some(listen);
    with_regions(&mut cfg, region_dir, id);
    let node = Node::start_with_verbs(cfg, secret(), VerbsSource::Real)
        .await
        .map_err(|e| format!("starting {id} on {listen}: {e}"))?;
    let stats: Stats = Arc::default();
    let (mirror, mirror_rx) = tokio::sync::mpsc::channel(4);
    let mut mirror_rx = Some(mirror_rx);
    for (name, tag, spec) in client_specs() {
        let h = node
            .register(name, spec)
            .await
            .map_err(|e| format!("{id}: registering {name}: {e}"))?;
        lock(&stats).insert(name.to_string(), RecvStats::default());
        let mut hk = hooks.clone();
        if name != MIRROR {
            hk.crash_at = None;
        }
        let cmds = if name == MIRROR {
            mirror_rx.take()
        } else {
            None
        };
        spawn_receiver(h, tag, stats.clone(), hk, cmds);
    }
    let node = Arc::new(node);
    let probe = StallProbe::spawn(node.clone(), Instant::now());
    Ok(Receiver {
        node,
        stats,
        probe,
        mirror,
    })
}

/// Hands a region request to the mirror client's task and waits for its answer.
async fn ask_mirror(r: &Receiver, cmd: region::RegionCmd) -> Value {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if r.mirror.send((cmd, tx)).await.is_err() {
        return json!({ "ok": false, "why": "the mirror client's task is gone" });
    }
    match tokio::time::timeout(Duration::from_secs(25), rx).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => json!({ "ok": false, "why": "the mirror client's task dropped the request" }),
        Err(_) => json!({ "ok": false, "why": "the mirror client's task did not answer in 25 s" }),
    }
}

/// What the leader gets for `report`: the node's status, its clients' counts, this VM's CPU
/// ticks and the manager's longest stall.
async fn receiver_report(r: &Receiver) -> Value {
    let status = match r.node.status().await {
        Ok(s) => serde_json::to_value(&s).unwrap_or(Value::Null),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let stats = serde_json::to_value(&*lock(&r.stats)).unwrap_or(Value::Null);
    json!({
        "status": status,
        "clients": stats,
        "cpu_ticks": cpu_ticks(),
        "max_status_rtt": r.probe.take(),
    })
}

/// The partner's or the backup's whole run.
pub async fn run_receiver(role: Role, args: &Args, sync: SyncDir, hcas: Vec<Hca>) -> ExitCode {
    let t0 = Instant::now();
    let log = |m: String| eprintln!("[manager-lane {} {:8.3}] {m}", role.name(), secs(t0));
    let devices = if role == Role::Partner {
        check_devices(&hcas)
    } else {
        // The backup runs in a VM without rxe: it must NOT have RDMA (that is the point of
        // no_rdma_node_uses_tcp); it only reports what libibverbs says.
        Ok(describe_no_rdma())
    };
    let mut nodes: Vec<Receiver> = Vec::new();
    let mut ready = json!({ "ok": true });
    let crash_at = Arc::new(AtomicU64::new(0));
    match &devices {
        Ok(d) => {
            log(d.clone());
            ready["devices"] = json!(d);
            let names: &[&str] = if role == Role::Partner {
                &["node-b"]
            } else {
                &["node-c-nordma", "node-c-backup"]
            };
            for (id, addr) in names.iter().zip(args.listen.iter()) {
                let hooks = RecvHooks {
                    keep_indices: *id == "node-c-backup",
                    crash_at: (role == Role::Partner).then(|| (crash_at.clone(), sync.clone())),
                };
                let dir = args.region_dir.as_deref();
                match start_receiver(id, *addr, &hcas, hooks, dir).await {
                    Ok(r) => {
                        log(format!("{id} listening on {addr}"));
                        nodes.push(r);
                    }
                    Err(e) => {
                        log(e.clone());
                        ready = json!({ "ok": false, "why": e });
                        break;
                    }
                }
            }
            if nodes.is_empty() && ready["ok"] == json!(true) {
                ready = json!({ "ok": false, "why": "no --listen address given" });
            }
        }
        Err(e) => {
            log(format!("FAIL: {e}"));
            ready = json!({ "ok": false, "why": e });
        }
    }
    let ok = ready["ok"] == json!(true);
    if let Err(e) = sync.put(&format!("mlane.ready.{}", role.name()), &ready.to_string()) {
        log(e);
        return ExitCode::from(EXIT_NOT_RUN);
    }
    // Serve the leader's requests until it says exit (or is gone).
    let mut n = 0u64;
    let mut last_seen = Instant::now();
    let limit = Duration::from_secs(args.connect_timeout + 20 * args.scenario_timeout);
    loop {
        let req = sync.path(&format!("mlane.req.{}.{}", role.name(), n + 1));
        if let Ok(cmd) = std::fs::read_to_string(&req) {
            n += 1;
            last_seen = Instant::now();
            let cmd = cmd.trim().to_string();
            let answer = match cmd.as_str() {
                "report" | "exit" => {
                    let mut per_node = serde_json::Map::new();
                    for r in &nodes {
                        per_node.insert(r.node.node_id().to_string(), receiver_report(r).await);
                    }
                    json!({ "ok": ok, "nodes": per_node })
                }
                "resync" => {
                    for r in &nodes {
                        resync(&r.stats);
                    }
                    log("resync: every client accepts its next record wherever it starts".into());
                    json!({ "ok": true })
                }
                other if parse_cmd(other).is_some() => match (nodes.first(), parse_cmd(other)) {
                    (Some(r), Some(c)) => ask_mirror(r, c).await,
                    _ => json!({ "ok": false, "why": "no node to ask" }),
                },
                other => match other.strip_prefix("crash-at ").map(str::parse::<u64>) {
                    Some(Ok(ix)) if role == Role::Partner => {
                        crash_at.store(ix, Ordering::SeqCst);
                        log(format!("armed: abort on receiving mirror record {ix}"));
                        json!({ "ok": true })
                    }
                    _ => json!({ "ok": false, "why": format!("unknown request {other:?}") }),
                },
            };
            if let Err(e) = sync.put(
                &format!("mlane.resp.{}.{n}", role.name()),
                &answer.to_string(),
            ) {
                log(e);
            }
            if cmd == "exit" {
                log(format!("exit requested; final report: {answer}"));
                break;
            }
            continue;
        }
        if sync.aborted().is_some() || sync.stopped() {
            log("the leader is gone; stopping".into());
            for r in &nodes {
                log(format!(
                    "{}: {}",
                    r.node.node_id(),
                    receiver_report(r).await
                ));
            }
            break;
        }
        if last_seen.elapsed() > limit {
            log("no request for too long; stopping".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_RUN)
    }
}
