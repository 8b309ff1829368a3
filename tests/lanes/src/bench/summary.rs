//! `bench-lane --role summary`: reads the raw outputs bench-lane.sh saved (perftest's and
//! iperf3's, and the peercm sides' JSON), computes per round and cable the ratios, and
//! reports each as the median over the rounds with its range:
//!
//! - throughput: peercm 64 KiB MiB/s / `ib_write_bw` average MiB/s (target >= 0.95);
//! - latency: peercm's 64 B completion (call to `Acked`: a full round trip) / (2 x
//!   `ib_write_lat` t_typical), i.e. RTT against RTT, as medians (target <= 1.3); the same for
//!   p99 (figure only), and against `ib_send_lat -e` (event-driven completions, as peercm's
//!   link threads wait) to show what busy polling alone is worth;
//! - where the time goes: the same writes on a bare RDMA link (`rawlink`) against perftest,
//!   and peercm against that raw link;
//! - TCP: peercm 64 KiB MiB/s over TCP only / iperf3's received MiB/s.

use super::parse::{self, Iperf, PerftestBw, PerftestLat};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// One ratio over the rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

/// The median and range of `v`; `None` when empty.
pub fn spread(v: &[f64]) -> Option<Spread> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: s[0],
        max: s[n - 1],
        values: v.to_vec(),
    })
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

fn read_json(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(&read(dir, name)?).ok()
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// The rounds found in `dir` (tags `c<k>.r<n>` and `tcp.r<n>`).
fn tags(dir: &Path) -> Result<Vec<String>, String> {
    let mut t: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            let mut it = n.splitn(3, '.');
            let (a, b) = (it.next()?, it.next()?);
            (b.starts_with('r') && (a.starts_with('c') || a == "tcp")).then(|| format!("{a}.{b}"))
        })
        .collect();
    t.sort();
    t.dedup();
    Ok(t)
}

/// Everything one `c<k>.r<n>` tag measured, with its ratios.
fn cable_round(dir: &Path, tag: &str) -> Value {
    let bw: Option<PerftestBw> =
        read(dir, &format!("{tag}.ib_write_bw.txt")).and_then(|t| parse::perftest_bw(&t, 65536));
    let wlat: Option<PerftestLat> =
        read(dir, &format!("{tag}.ib_write_lat.txt")).and_then(|t| parse::perftest_lat(&t, 64));
    let slat: Option<PerftestLat> =
        read(dir, &format!("{tag}.ib_send_lat.txt")).and_then(|t| parse::perftest_lat(&t, 64));
    let raw = read_json(dir, &format!("{tag}.rawlink.json"));
    let r_mib = raw.as_ref().and_then(|v| num(v, &["bw", "mib_per_s"]));
    let r_med = raw
        .as_ref()
        .and_then(|v| num(v, &["lat", "rtt_us", "median_us"]));
    let pbw = read_json(dir, &format!("{tag}.peercm_bw.json"));
    let plat = read_json(dir, &format!("{tag}.peercm_lat.json"));
    let p_mib = pbw.as_ref().and_then(|v| num(v, &["bw", "mib_per_s"]));
    let p_med = plat
        .as_ref()
        .and_then(|v| num(v, &["lat", "rtt_us", "median_us"]));
    let p_p99 = plat
        .as_ref()
        .and_then(|v| num(v, &["lat", "rtt_us", "p99_us"]));
    let one_sided = |kind: &str| {
        read_json(dir, &format!("{tag}.{kind}.receiver.json"))
            .and_then(|v| v.get("all_one_sided")?.as_bool())
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    json!({
        "tag": tag,
        "ib_write_bw_mib_s": bw.map(|b| b.avg_mib_s),
        "peercm_bw_mib_s": p_mib,
        "bw_ratio": ratio(p_mib, bw.map(|b| b.avg_mib_s)),
        "ib_write_lat_typical_us": wlat.map(|l| l.typical_us),
        "ib_write_lat_p99_us": wlat.map(|l| l.p99_us),
        "ib_send_lat_e_typical_us": slat.map(|l| l.typical_us),
        "peercm_rtt_median_us": p_med,
        "peercm_rtt_p99_us": p_p99,
        "lat_ratio": ratio(p_med, wlat.map(|l| 2.0 * l.typical_us)),
        "lat_p99_ratio": ratio(p_p99, wlat.map(|l| 2.0 * l.p99_us)),
        "lat_ratio_vs_send_lat_e": ratio(p_med, slat.map(|l| 2.0 * l.typical_us)),
        "rawlink_bw_mib_s": r_mib,
        "rawlink_rtt_median_us": r_med,
        "bw_ratio_vs_rawlink": ratio(p_mib, r_mib),
        "lat_ratio_vs_rawlink": ratio(p_med, r_med),
        "rawlink_bw_ratio": ratio(r_mib, bw.map(|b| b.avg_mib_s)),
        "rawlink_lat_ratio": ratio(r_med, wlat.map(|l| 2.0 * l.typical_us)),
        "rawlink_lat_cpu_ms": raw.as_ref().and_then(|v| num(v, &["lat", "cpu_process_ms"])),
        "peercm_bw_cpu_ms": pbw.as_ref().and_then(|v| num(v, &["bw", "cpu_process_ms"])),
        "peercm_bw_vm_busy_ms": pbw.as_ref().and_then(|v| num(v, &["bw", "cpu_vm_busy_ms"])),
        "peercm_bw_elapsed_ms": pbw.as_ref().and_then(|v| num(v, &["bw", "elapsed_ms"])),
        "peercm_lat_cpu_ms": plat.as_ref().and_then(|v| num(v, &["lat", "cpu_process_ms"])),
        "peercm_lat_vm_busy_ms": plat.as_ref().and_then(|v| num(v, &["lat", "cpu_vm_busy_ms"])),
        "bw_all_one_sided": one_sided("peercm_bw"),
        "lat_all_one_sided": one_sided("peercm_lat"),
    })
}

/// Everything one `tcp.r<n>` tag measured.
fn tcp_round(dir: &Path, tag: &str) -> Value {
    let ip: Option<Iperf> =
        read(dir, &format!("{tag}.iperf3.json")).and_then(|t| parse::iperf3(&t));
    let p = read_json(dir, &format!("{tag}.peercm_tcp.json"));
    let p_mib = p.as_ref().and_then(|v| num(v, &["bw", "mib_per_s"]));
    json!({
        "tag": tag,
        "iperf3_mib_s": ip.map(|i| i.received_mib_s),
        "iperf3_retransmits": ip.map(|i| i.retransmits),
        "peercm_tcp_mib_s": p_mib,
        "peercm_tcp_rtt_median_us": p.as_ref().and_then(|v| num(v, &["lat", "rtt_us", "median_us"])),
        "tcp_ratio": match (p_mib, ip) {
            (Some(a), Some(i)) if i.received_mib_s > 0.0 => Some(a / i.received_mib_s),
            _ => None,
        },
    })
}

/// Reads `dir`; the whole summary as JSON: every round, and per path every figure's spread.
pub fn summarize(dir: &Path) -> Result<Value, String> {
    let mut rounds = Vec::new();
    let mut paths: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for tag in tags(dir)? {
        let (path, v) = match tag.split_once('.') {
            Some(("tcp", _)) => ("tcp".to_string(), tcp_round(dir, &tag)),
            Some((c, _)) => (c.to_string(), cable_round(dir, &tag)),
            None => continue,
        };
        if let Some(m) = v.as_object() {
            let figs = paths.entry(path).or_default();
            for (k, x) in m {
                if let Some(f) = x.as_f64() {
                    figs.entry(k.clone()).or_default().push(f);
                }
            }
        }
        rounds.push(v);
    }
    if rounds.is_empty() {
        return Err(format!("no results in {}", dir.display()));
    }
    let spreads: BTreeMap<String, BTreeMap<String, Spread>> = paths
        .into_iter()
        .map(|(p, figs)| {
            let s = figs
                .into_iter()
                .filter_map(|(k, v)| Some((k, spread(&v)?)))
                .collect();
            (p, s)
        })
        .collect();
    Ok(json!({ "rounds": rounds, "paths": spreads }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(spread(&[]), None);
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0]).unwrap().median, 2.5);
    }

    #[test]
    fn a_results_dir_is_summarized_with_ratios() {
        let dir = std::env::temp_dir().join(format!("bench-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = |n: &str, t: &str| std::fs::write(dir.join(n), t).unwrap();
        w("c0.r1.ib_write_bw.txt", " 65536 400 20.0 16.0 0.00025\n");
        w("c0.r1.peercm_bw.json", r#"{"bw":{"mib_per_s":12.0}}"#);
        w(
            "c0.r1.ib_write_lat.txt",
            " 64 1000 90.0 900.0 100.0 110.0 5.0 300.0 800.0\n",
        );
        w(
            "c0.r1.peercm_lat.json",
            r#"{"lat":{"rtt_us":{"median_us":300.0,"p99_us":900.0}}}"#,
        );
        w("c0.r1.peercm_bw.receiver.json", r#"{"all_one_sided":true}"#);
        w(
            "tcp.r1.iperf3.json",
            r#"{"end":{"sum_received":{"bits_per_second":335544320.0}}}"#,
        );
        w("tcp.r1.peercm_tcp.json", r#"{"bw":{"mib_per_s":30.0}}"#);
        let s = summarize(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let c0 = &s["paths"]["c0"];
        assert_eq!(c0["bw_ratio"]["median"], 0.75);
        assert_eq!(c0["lat_ratio"]["median"], 1.5);
        assert_eq!(c0["lat_p99_ratio"]["median"], 1.5);
        assert_eq!(s["rounds"][0]["bw_all_one_sided"], true);
        assert_eq!(s["paths"]["tcp"]["tcp_ratio"]["median"], 0.75);
        assert!(c0.get("lat_ratio_vs_send_lat_e").is_none());
    }
}
