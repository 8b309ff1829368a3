//! `peercm demo`: the built-in demonstration on an embedded default configuration.
//!
//! Two nodes on 127.0.0.1 (node-b listens on an ephemeral port, node-a dials it with several
//! TCP connections through a small TCP relay, [`relay`]), authenticated with a fresh random
//! secret, each with two simulated HCAs (an in-process fabric, one cable per HCA pair) unless
//! `--hcas 0`. The manager brings up one RDMA rail per HCA pair over the TCP bootstrap session
//! and places the clients by bandwidth. A mirroring client (sync, high bandwidth) copies log
//! records from node-a into node-b's memory while a heartbeat client beats both ways. A third of
//! the way through, the cable of the mirror's rail is cut (the mirror migrates); halfway, the
//! relay cuts one TCP connection (both of its sockets closed, as a network fault would); at two
//! thirds the cable is restored. The demo then checks, record by record, that node-b stored
//! every record exactly once and in order (count, LSN range, chained CRC32C digest) and prints
//! a summary.

mod fabric;
mod relay;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use fabric::{demo_fabric, placed, print_placement, settle_rails};
use peercm_clients::heartbeat::Heartbeat;
use peercm_clients::mirror::{digest_of, MirrorReceiver, MirrorSender};
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::{NodeStatus, TransportKind};
use peercm_cm_manager::{
    ClientSpec, ClusterSecret, LatencyClass, LinkId, Node, NodeConfig, SendModel, VerbsSource,
};
use relay::{CutConnection, Relay};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Options of `peercm demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Log records to mirror.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub records: u64,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub record_bytes: u32,
    /// TCP connections between the nodes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
    /// Do not inject faults (no cable cut, no killed connection).
    #[arg(long)]
    pub no_kill: bool,
    /// Simulated HCAs per node (an in-process fabric, 25 Gb/s each, one cable per pair); 0
    /// runs over TCP only.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=4))]
    pub hcas: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

fn record_data(lsn: u64, len: usize) -> Bytes {
    // Deterministic, LSN-dependent content so misplaced or mixed-up records change the digest.
    let mut v = Vec::with_capacity(len);
    let mut x = lsn.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

const MIRROR: ClientSpec = ClientSpec {
    bandwidth_mbytes_per_s: 800,
    latency: LatencyClass::Bulk,
    model: SendModel::Sync,
};
const HEARTBEAT: ClientSpec = ClientSpec {
    bandwidth_mbytes_per_s: 1,
    latency: LatencyClass::Critical,
    model: SendModel::Async,
};

/// Runs the demo; Ok(true) when every record was delivered exactly once, in order.
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let secret_bytes: [u8; 32] = rand::random();
    let secret = ClusterSecret::new(hex::encode(secret_bytes).as_bytes()).context("demo secret")?;

    let hcas: Vec<String> = (0..args.hcas).map(|i| format!("hca{i}")).collect();
    let fabric = (!hcas.is_empty())
        .then(|| demo_fabric(&hcas))
        .transpose()
        .context("building the simulated fabric")?;
    let verbs = |node: &str| match &fabric {
        Some(f) => VerbsSource::Provider(f.provider(node)),
        None => VerbsSource::Disabled,
    };
    let mut cfg_b = NodeConfig::new("node-b", "demo");
    cfg_b.listen = Some("127.0.0.1:0".parse()?);
    let node_b = Node::start_with_verbs(cfg_b, secret.clone(), verbs("b"))
        .await
        .context("starting node-b")?;
    let addr = node_b
        .local_addr()
        .context("node-b has no listen address")?;
    let relay = Relay::start(addr).await.context("starting the TCP relay")?;
    let mut cfg_a = NodeConfig::new("node-a", "demo");
    cfg_a.peer = Some(PeerConfig::new(relay.local_addr(), args.connections));
    let node_a = Node::start_with_verbs(cfg_a, secret, verbs("a"))
        .await
        .context("starting node-a")?;

    let mirror_a = node_a.register("mirror", MIRROR).await?;
    let mirror_b = node_b.register("mirror", MIRROR).await?;
    let hb_a = node_a.register("heartbeat", HEARTBEAT).await?;
    let hb_b = node_b.register("heartbeat", HEARTBEAT).await?;
    mirror_a.connect().await?;
    hb_a.connect().await?;

    println!(
        "peercm demo: node-a -> node-b on {addr} through a TCP relay on {}: {} TCP connections (HMAC-authenticated){}",
        relay.local_addr(),
        args.connections,
        if hcas.is_empty() {
            String::new()
        } else {
            format!(" + {} simulated HCAs per node", hcas.len())
        }
    );
    let n = args.records;
    let len = args.record_bytes as usize;
    let receiver = tokio::spawn(async move {
        let mut r = MirrorReceiver::new(mirror_b, 1024);
        r.serve(Some(n)).await.map(|_| r)
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let hb_task = |handle, mut stop: tokio::sync::watch::Receiver<bool>| {
        tokio::spawn(async move {
            let mut hb = Heartbeat::new(handle, Duration::from_millis(20));
            let res = hb
                .run_until(async move {
                    let _ = stop.changed().await;
                })
                .await;
            res.map(|_| hb.stats())
        })
    };
    let hb_a_task = hb_task(hb_a, stop_rx.clone());
    let hb_b_task = hb_task(hb_b, stop_rx);

    let deadline = Duration::from_secs(args.timeout_secs);
    let mut sender = MirrorSender::new(mirror_a);
    tokio::time::timeout(deadline, sender.wait_up())
        .await
        .context("the nodes did not connect in time")??;
    let mut cut_rail = None;
    if !hcas.is_empty() {
        let s = settle_rails(&node_a, hcas.len()).await?;
        println!("placement (node-a) before traffic:");
        print_placement(&s);
        // The mirror's rail, with its HCA's position in `hcas`.
        cut_rail = placed(&s, "mirror").and_then(|r| Some((r, r.rail_index()?)));
    }

    let start = Instant::now();
    let mut killed: Option<(LinkId, CutConnection)> = None;
    let mut killed_at = 0;
    let mut cut = None;
    let mut restored = None;
    let work = async {
        for lsn in 1..=n {
            sender.append(record_data(lsn, len)).await?;
            if lsn % 64 == 0 {
                sender.poll().await?;
                tokio::task::yield_now().await;
            }
            if let (false, Some((rail, k)), Some(f)) = (args.no_kill, cut_rail, &fabric) {
                let hca = hcas[k].as_str();
                if lsn == (n / 3).max(1) {
                    f.cut_cable(("a", hca, 1)).context("cutting the cable")?;
                    cut = Some((rail, lsn));
                }
                if lsn == (2 * n / 3).max(1) {
                    f.restore_cable(("a", hca, 1))
                        .context("restoring the cable")?;
                    restored = Some(lsn);
                }
            }
            if !args.no_kill && lsn == n / 2 {
                killed = cut_connection(&relay, &node_a).await?;
                killed_at = lsn;
            }
        }
        sender.wait_mirrored(n).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(deadline, work)
        .await
        .context("mirroring did not finish in time")??;
    let elapsed = start.elapsed();

    let receiver = tokio::time::timeout(Duration::from_secs(10), receiver)
        .await
        .context("receiver did not finish")???;
    let _ = stop_tx.send(true);
    let hb_a_stats = hb_a_task.await??;
    let hb_b_stats = hb_b_task.await??;
    let status_a = node_a.status().await?;
    let status_b = node_b.status().await?;

    let expected_digest = {
        let data: Vec<Bytes> = (1..=n).map(|l| record_data(l, len)).collect();
        digest_of(data.iter().map(|b| b.as_ref()))
    };
    let rs = receiver.stats();
    let ss = sender.stats();
    let mb = (n as f64 * len as f64) / 1e6;
    let secs = elapsed.as_secs_f64().max(1e-9);

    println!();
    println!("mirror    {n} records x {len} B appended on node-a");
    println!(
        "          {} acknowledged by node-b's mirror client (mirrored up to LSN {})",
        ss.mirrored,
        sender.mirrored_upto()
    );
    println!(
        "          {} stored on node-b, LSN 1..={}, {} resent duplicates recognised, {} gaps, {} corrupt",
        rs.stored,
        receiver.stored_upto(),
        rs.duplicates,
        rs.gaps,
        rs.corrupt
    );
    println!(
        "          digest of stored data {:#010x}, expected {:#010x}",
        receiver.digest(),
        expected_digest
    );
    if let Some((rail, at)) = cut {
        println!(
            "fault     cut the cable of rail {rail} (the mirror's) after record {at}{}",
            restored.map_or(String::new(), |r| format!(", restored after record {r}"))
        );
    }
    match killed {
        Some((link, c)) => println!(
            "fault     killed TCP link {link} of node-a after record {killed_at}: the relay cut connection {} ({} <-> {})",
            c.number, c.from, c.to
        ),
        None => println!("fault     none (--no-kill)"),
    }
    if !hcas.is_empty() {
        println!(
            "mirror    moved between interconnects {} times, never NACKed or resent ({} resent)",
            ss.migrations, ss.resent
        );
        println!("placement (node-a) at the end:");
        print_placement(&status_a);
    }
    println!(
        "transport frames replayed {} / duplicates dropped by receivers {} (a) {} (b); links lost {} (a) {} (b); resets {}",
        status_a.stats.replays + status_b.stats.replays,
        status_a.stats.duplicates_dropped,
        status_b.stats.duplicates_dropped,
        status_a.stats.links_lost,
        status_b.stats.links_lost,
        status_a.stats.resets
    );
    println!(
        "heartbeat node-a sent {} received {}; node-b sent {} received {}; out of order {}",
        hb_a_stats.sent,
        hb_a_stats.received,
        hb_b_stats.sent,
        hb_b_stats.received,
        hb_a_stats.out_of_order + hb_b_stats.out_of_order
    );
    println!(
        "speed     {:.1} MB/s, {:.0} records/s (sync: each record acknowledged by the partner client), {:.2} s",
        mb / secs,
        n as f64 / secs,
        secs
    );
    println!("events    (node-a)");
    for e in &status_a.timeline {
        println!("          {:>6} ms  {}", e.at_ms, e.what);
    }

    let mut failures = Vec::new();
    if rs.stored != n || receiver.stored_upto() != n {
        failures.push(format!(
            "stored {} records up to LSN {}, expected {n}",
            rs.stored,
            receiver.stored_upto()
        ));
    }
    if receiver.digest() != expected_digest {
        failures.push("digest mismatch: content or order differs".to_string());
    }
    if rs.gaps != 0 || rs.corrupt != 0 {
        failures.push(format!("{} gaps, {} corrupt records", rs.gaps, rs.corrupt));
    }
    if ss.mirrored < n || sender.mirrored_upto() != n {
        failures.push(format!("only {} records acknowledged", ss.mirrored));
    }
    if hb_a_stats.out_of_order + hb_b_stats.out_of_order != 0 {
        failures.push("heartbeats out of order".into());
    }
    if !args.no_kill && killed.is_none() {
        bail!("could not kill a connection: none was up");
    }
    if cut.is_some() && ss.migrations == 0 {
        failures.push("the mirror was not migrated off the cut rail".into());
    }
    if failures.is_empty() {
        println!(
            "\nRESULT    PASS: every record delivered exactly once, in order, across {}",
            if cut.is_some() {
                "the cut cable and the killed connection"
            } else {
                "the killed connection"
            }
        );
        Ok(true)
    } else {
        println!("\nRESULT    FAIL:");
        for f in failures {
            println!("          - {f}");
        }
        Ok(false)
    }
}

/// node-a's TCP links.
fn tcp_links(s: &NodeStatus) -> BTreeSet<LinkId> {
    s.links
        .iter()
        .filter(|l| l.transport == TransportKind::Tcp)
        .map(|l| l.id)
        .collect()
}

/// Has the relay cut one live connection, and waits (up to 10 s) until `node` has lost the link
/// it carried. Returns that link and the connection; `None` if no connection was live.
async fn cut_connection(
    relay: &Relay,
    node: &Node,
) -> anyhow::Result<Option<(LinkId, CutConnection)>> {
    let before = tcp_links(&node.status().await?);
    let Some(cut) = relay.cut_one() else {
        return Ok(None);
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = tcp_links(&node.status().await?);
        if let Some(lost) = before.difference(&now).next() {
            return Ok(Some((*lost, cut)));
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not lose a link within 10 s of the relay cutting connection {}",
                node.node_id(),
                cut.number
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
