//! The benchmark's arithmetic: latency summaries (min, median, p99, mean, max) and rates, and
//! CPU time read from /proc (this process's, and the whole VM's busy time), so that a figure
//! can say where the time went.

use serde::Serialize;
use std::time::Duration;

/// A latency sample set summarised, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub min_us: f64,
    /// The median (perftest's `t_typical` is its median too).
    pub median_us: f64,
    /// The 99th percentile: the smallest sample with at least 99 % of the samples at or below it.
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

/// Summarises `samples` (any order); `None` when empty.
pub fn summarize(samples: &[Duration]) -> Option<LatencySummary> {
    if samples.is_empty() {
        return None;
    }
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let n = us.len();
    let median = if n % 2 == 1 {
        us[n / 2]
    } else {
        (us[n / 2 - 1] + us[n / 2]) / 2.0
    };
    let rank = (n * 99).div_ceil(100).max(1);
    Some(LatencySummary {
        count: n,
        min_us: us[0],
        median_us: median,
        p99_us: us[rank - 1],
        mean_us: us.iter().sum::<f64>() / n as f64,
        max_us: us[n - 1],
    })
}

/// `bytes` over `elapsed`, in MiB/s (2^20 bytes: what perftest prints as `MB/sec`) and MB/s.
pub fn rates(bytes: u64, elapsed: Duration) -> (f64, f64) {
    let s = elapsed.as_secs_f64().max(1e-9);
    (bytes as f64 / s / 1_048_576.0, bytes as f64 / s / 1e6)
}

/// CPU time: this process's (user + system) and the whole machine's busy time, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    pub process_ms: f64,
    pub machine_busy_ms: f64,
}

/// Reads both counters now (zeros when /proc cannot be read: the figures then say 0).
pub fn cpu_now() -> CpuSample {
    let process_ms = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| process_ticks(&s))
        .map_or(0.0, ticks_to_ms);
    let machine_busy_ms = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| machine_busy_ticks(&s))
        .map_or(0.0, ticks_to_ms);
    CpuSample {
        process_ms,
        machine_busy_ms,
    }
}

/// CPU used between two samples, in ms.
pub fn cpu_since(before: CpuSample, after: CpuSample) -> CpuSample {
    CpuSample {
        process_ms: after.process_ms - before.process_ms,
        machine_busy_ms: after.machine_busy_ms - before.machine_busy_ms,
    }
}

/// Linux reports these in USER_HZ, 100 on every architecture the lane runs.
fn ticks_to_ms(t: u64) -> f64 {
    t as f64 * 10.0
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15, counted after the `)` that
/// ends the command name, which may itself hold spaces and parentheses).
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, so index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy ticks of the `cpu` line of /proc/stat: everything but idle and iowait.
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_micros(x)).collect()
    }

    #[test]
    fn summaries_of_known_samples() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&us(&[30, 10, 20])).unwrap();
        assert_eq!((s.min_us, s.median_us, s.max_us), (10.0, 20.0, 30.0));
        assert_eq!(s.p99_us, 30.0);
        let even = summarize(&us(&[4, 1, 3, 2])).unwrap();
        assert_eq!(even.median_us, 2.5);
        assert_eq!(even.mean_us, 2.5);
        // 200 samples 1..=200 µs: the 198th is the smallest with 99 % at or below it.
        let many: Vec<u64> = (1..=200).rev().collect();
        assert_eq!(summarize(&us(&many)).unwrap().p99_us, 198.0);
    }

    #[test]
    fn rates_use_both_units() {
        let (mib, mb) = rates(2 * 1_048_576, Duration::from_secs(2));
        assert!((mib - 1.0).abs() < 1e-9);
        assert!((mb - 1.048576).abs() < 1e-9);
    }

    #[test]
    fn proc_lines_parse() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0";
        assert_eq!(process_ticks(stat), Some(175));
        let cpu = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 100 5 50 1000 20 3 2 0 0 0\n";
        assert_eq!(machine_busy_ticks(cpu), Some(160));
        assert_eq!(process_ticks("garbage"), None);
    }
}
