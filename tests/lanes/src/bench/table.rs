//! The summary rendered: one `figure <path> <name> <median> (<min>-<max>, n=<rounds>)` line per
//! figure, and the final table (text and markdown) with peercm, its reference and the ratio.

use serde_json::Value;
use std::fmt::Write;

/// One row: the path, what is compared, peercm's figure, the reference's, the ratio and the
/// target.
struct Row {
    path: &'static str,
    what: &'static str,
    peercm: &'static str,
    reference: &'static str,
    reference_x2: bool,
    ratio: &'static str,
    target: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        path: "",
        what: "64 KiB write throughput, MiB/s",
        peercm: "peercm_bw_mib_s",
        reference: "ib_write_bw_mib_s",
        reference_x2: false,
        ratio: "bw_ratio",
        target: ">= 0.95",
    },
    Row {
        path: "",
        what: "64 B completion RTT (median), us; ref = 2 x ib_write_lat t_typical",
        peercm: "peercm_rtt_median_us",
        reference: "ib_write_lat_typical_us",
        reference_x2: true,
        ratio: "lat_ratio",
        target: "<= 1.3",
    },
    Row {
        path: "",
        what: "64 B completion RTT (p99), us; ref = 2 x ib_write_lat p99",
        peercm: "peercm_rtt_p99_us",
        reference: "ib_write_lat_p99_us",
        reference_x2: true,
        ratio: "lat_p99_ratio",
        target: "-",
    },
    Row {
        path: "",
        what: "64 B RTT (median) vs 2 x ib_send_lat -e t_typical (event-driven)",
        peercm: "peercm_rtt_median_us",
        reference: "ib_send_lat_e_typical_us",
        reference_x2: true,
        ratio: "lat_ratio_vs_send_lat_e",
        target: "-",
    },
    Row {
        path: "",
        what: "raw rdma-link, 64 KiB throughput, MiB/s; ref = ib_write_bw",
        peercm: "rawlink_bw_mib_s",
        reference: "ib_write_bw_mib_s",
        reference_x2: false,
        ratio: "rawlink_bw_ratio",
        target: "-",
    },
    Row {
        path: "",
        what: "raw rdma-link, 64 B RTT (median), us; ref = 2 x ib_write_lat t_typical",
        peercm: "rawlink_rtt_median_us",
        reference: "ib_write_lat_typical_us",
        reference_x2: true,
        ratio: "rawlink_lat_ratio",
        target: "-",
    },
    Row {
        path: "",
        what: "peercm 64 KiB throughput vs raw rdma-link, MiB/s",
        peercm: "peercm_bw_mib_s",
        reference: "rawlink_bw_mib_s",
        reference_x2: false,
        ratio: "bw_ratio_vs_rawlink",
        target: "-",
    },
    Row {
        path: "",
        what: "peercm 64 B RTT (median) vs raw rdma-link, us",
        peercm: "peercm_rtt_median_us",
        reference: "rawlink_rtt_median_us",
        reference_x2: false,
        ratio: "lat_ratio_vs_rawlink",
        target: "-",
    },
    Row {
        path: "tcp",
        what: "64 KiB write throughput over TCP, MiB/s; ref = iperf3",
        peercm: "peercm_tcp_mib_s",
        reference: "iperf3_mib_s",
        reference_x2: false,
        ratio: "tcp_ratio",
        target: "-",
    },
];

fn fmt_spread(s: &Value, scale: f64, digits: usize) -> String {
    match (s["median"].as_f64(), s["min"].as_f64(), s["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) => format!(
            "{:.d$} ({:.d$}-{:.d$})",
            m * scale,
            lo * scale,
            hi * scale,
            d = digits
        ),
        _ => "n/a".into(),
    }
}

fn label(path: &str) -> String {
    match path.strip_prefix('c') {
        Some(k) => format!("rxe{k} (cable {k})"),
        None => "TCP (cable 0's IP)".into(),
    }
}

/// Every figure as a line, then the table; and the same table in markdown.
pub fn render(summary: &Value) -> (String, String) {
    let mut text = String::new();
    let empty = serde_json::Map::new();
    let paths = summary["paths"].as_object().unwrap_or(&empty);
    for (p, figs) in paths {
        for (k, s) in figs.as_object().unwrap_or(&empty) {
            let n = s["values"].as_array().map_or(0, |v| v.len());
            let _ = writeln!(text, "figure {p} {k} {} n={n}", fmt_spread(s, 1.0, 3));
        }
    }
    let mut md = String::from(
        "| path | figure | peercm | reference | ratio | target |\n|---|---|---|---|---|---|\n",
    );
    let _ = writeln!(
        text,
        "\n{:<20} {:<68} {:>22} {:>22} {:>20} {:>8}",
        "path", "figure (median over rounds, range)", "peercm", "reference", "ratio", "target"
    );
    for (p, figs) in paths {
        for r in ROWS {
            let is_tcp = p == "tcp";
            if (r.path == "tcp") != is_tcp || figs.get(r.ratio).is_none() {
                continue;
            }
            let pe = fmt_spread(&figs[r.peercm], 1.0, 1);
            let scale = if r.reference_x2 { 2.0 } else { 1.0 };
            let re = fmt_spread(&figs[r.reference], scale, 1);
            let ra = fmt_spread(&figs[r.ratio], 1.0, 2);
            let l = label(p);
            let _ = writeln!(
                text,
                "{l:<20} {:<68} {pe:>22} {re:>22} {ra:>20} {:>8}",
                r.what, r.target
            );
            let _ = writeln!(
                md,
                "| {l} | {} | {pe} | {re} | {ra} | {} |",
                r.what, r.target
            );
        }
    }
    (text, md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_show_the_reference_doubled_for_latency() {
        let s = json!({"paths": {"c1": {
            "peercm_rtt_median_us": {"median": 300.0, "min": 290.0, "max": 310.0, "values": [300.0]},
            "ib_write_lat_typical_us": {"median": 100.0, "min": 95.0, "max": 120.0, "values": [100.0]},
            "lat_ratio": {"median": 1.5, "min": 1.2, "max": 1.6, "values": [1.5]}
        }}});
        let (text, md) = render(&s);
        assert!(
            text.contains("figure c1 lat_ratio 1.500 (1.200-1.600) n=1"),
            "{text}"
        );
        assert!(
            md.contains("| rxe1 (cable 1) | 64 B completion RTT (median), us; ref = 2 x ib_write_lat t_typical | 300.0 (290.0-310.0) | 200.0 (190.0-240.0) | 1.50 (1.20-1.60) | <= 1.3 |"),
            "{md}"
        );
        assert!(!md.contains("throughput"), "{md}");
    }
}
