//! Registration time and memory per client at 1, 256 and 4,096 clients (issue 8, item 1),
//! measured and printed, never asserted (timing goals stay out of tests). Run with
//! `cargo bench -p peercm-cm-manager --bench clients`; the figures go into docs/benchmarks.md.
//!
//! Each size runs in a fresh child process (this executable again), so the resident-set
//! growth it reports belongs to that size alone. In the child, two nodes share the process
//! over loopback TCP: the partner `b` already has every client's namesake and the session is
//! up, then the bench registers (and connects) the clients on `a` one after the other, as an
//! application would. Reported per client:
//!
//! - `register`: the mean time of `Node::register` (the call returns once the manager has
//!   registered the client and queued its announcement), and, for 256 and 4,096, the mean of
//!   the last tenth (the cost of one more client at that size);
//! - `rss`: the growth of the process's resident set (VmRSS) from before the registrations
//!   until every client is up on both nodes, divided by the number of clients. It covers
//!   everything a client costs in this process: `a`'s session state, handle and event
//!   channel, and the announcement `b` keeps for it. At one client it is below the page
//!   granularity and reported as such.

use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, ClusterSecret, LatencyClass, Node, NodeConfig, SendModel,
};
use std::error::Error;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

const CHILD_ENV: &str = "PEERCM_BENCH_CLIENTS";
const SIZES: [usize; 3] = [1, 256, 4096];
/// Registrations timed at one client (register, then close, again and again).
const SINGLE_ROUNDS: usize = 1000;

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 10,
        latency: LatencyClass::Normal,
        model: SendModel::Async,
    }
}

fn secret() -> Res<ClusterSecret> {
    Ok(ClusterSecret::new(
        b"bench-clients-secret-0123456789abcdef",
    )?)
}

/// The process's resident set in KiB.
fn rss_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmRSS line")?
        .parse()?;
    Ok(kib)
}

fn name(i: usize) -> String {
    format!("c{i:05}")
}

async fn wait_up(h: &mut ClientHandle) -> Res<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), h.next_event()).await {
            Ok(Some(ClientEvent::Up)) => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("{}: event channel closed", h.name()).into()),
            Err(_) => return Err(format!("{}: not up within 60 s", h.name()).into()),
        }
    }
}

async fn pair() -> Res<(Node, Node)> {
    let mut bc = NodeConfig::new("node-b", "bench");
    bc.listen = Some("127.0.0.1:0".parse()?);
    let b = Node::start(bc, secret()?).await?;
    let mut ac = NodeConfig::new("node-a", "bench");
    ac.peer = Some(PeerConfig::new(
        b.local_addr().ok_or("b does not listen")?,
        1,
    ));
    let a = Node::start(ac, secret()?).await?;
    // The session is up once a probe client pair is.
    let _pb = b.register("probe", spec()).await?;
    let mut pa = a.register("probe", spec()).await?;
    pa.connect().await?;
    wait_up(&mut pa).await?;
    Ok((a, b))
}

/// One size, in this (child) process: prints one line of figures.
async fn child(n: usize) -> Res<()> {
    let (a, b) = pair().await?;
    if n == 1 {
        let _nb = b.register(&name(0), spec()).await?;
        let rss0 = rss_kib()?;
        let mut h = a.register(&name(0), spec()).await?;
        h.connect().await?;
        wait_up(&mut h).await?;
        let rss1 = rss_kib()?;
        h.close().await?;
        let mut total = Duration::ZERO;
        for _ in 0..SINGLE_ROUNDS {
            let t = Instant::now();
            let h = a.register(&name(0), spec()).await?;
            total += t.elapsed();
            h.close().await?;
        }
        let mean = total / SINGLE_ROUNDS as u32;
        println!(
            "clients {n:>5}: register {:>7.1} us (mean of {SINGLE_ROUNDS}); rss growth {} KiB for one client (page granularity)",
            mean.as_secs_f64() * 1e6,
            rss1.saturating_sub(rss0)
        );
        return Ok(());
    }
    let mut theirs = Vec::with_capacity(n);
    for i in 0..n {
        theirs.push(b.register(&name(i), spec()).await?);
    }
    let rss0 = rss_kib()?;
    let mut ours = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let h = a.register(&name(i), spec()).await?;
        times.push(t.elapsed());
        h.connect().await?;
        ours.push(h);
    }
    for h in ours.iter_mut() {
        wait_up(h).await?;
    }
    for h in theirs.iter_mut() {
        wait_up(h).await?;
    }
    // Let placement and announcements settle before reading the resident set.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss1 = rss_kib()?;
    let mean = |d: &[Duration]| d.iter().sum::<Duration>().as_secs_f64() / d.len() as f64 * 1e6;
    let tail = &times[n - n / 10..];
    println!(
        "clients {n:>5}: register {:>7.1} us mean, {:>7.1} us the last tenth; rss {:>6.2} KiB per client ({} KiB in all)",
        mean(&times),
        mean(tail),
        rss1.saturating_sub(rss0) as f64 / n as f64,
        rss1.saturating_sub(rss0)
    );
    drop(ours);
    drop(theirs);
    a.shutdown();
    b.shutdown();
    Ok(())
}

fn main() -> Res<()> {
    if let Ok(n) = std::env::var(CHILD_ENV) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(child(n.parse()?));
    }
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing and gets a
    // quick run of the smallest size only.
    let sizes: &[usize] = if std::env::args().any(|a| a == "--bench") {
        &SIZES
    } else {
        &SIZES[..1]
    };
    let exe = std::env::current_exe()?;
    for &n in sizes {
        let out = std::process::Command::new(&exe)
            .env(CHILD_ENV, n.to_string())
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            return Err(format!(
                "child for {n} clients failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    Ok(())
}
