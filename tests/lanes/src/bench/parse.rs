//! Parsers for the reference tools' outputs that bench-lane.sh saves: perftest's result line
//! (`ib_write_bw`, `ib_write_lat`, `ib_send_lat`) and iperf3's JSON. Each returns `None` for
//! output without a result (a failed run), never panics.

/// perftest's bandwidth result: the line `#bytes #iterations BW_peak BW_average MsgRate`
/// whose first field is `size`. perftest's `MB/sec` is 2^20 bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerftestBw {
    pub peak_mib_s: f64,
    pub avg_mib_s: f64,
}

pub fn perftest_bw(text: &str, size: u64) -> Option<PerftestBw> {
    let f = result_line(text, size, 5)?;
    Some(PerftestBw {
        peak_mib_s: f[2],
        avg_mib_s: f[3],
    })
}

/// perftest's latency result: `#bytes #iterations t_min t_max t_typical t_avg t_stdev 99%
/// 99.9%`, in µs. For these tools every figure is half a round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerftestLat {
    pub min_us: f64,
    pub typical_us: f64,
    pub avg_us: f64,
    pub p99_us: f64,
}

pub fn perftest_lat(text: &str, size: u64) -> Option<PerftestLat> {
    let f = result_line(text, size, 9)?;
    Some(PerftestLat {
        min_us: f[2],
        typical_us: f[4],
        avg_us: f[5],
        p99_us: f[7],
    })
}

/// The numeric fields of the first line that starts with `size` and has at least `fields`
/// numbers.
fn result_line(text: &str, size: u64, fields: usize) -> Option<Vec<f64>> {
    text.lines().find_map(|l| {
        let f: Vec<f64> = l
            .split_whitespace()
            .map(|x| x.parse::<f64>())
            .collect::<Result<_, _>>()
            .ok()?;
        (f.len() >= fields && f[0] == size as f64).then_some(f)
    })
}

/// iperf3 `-J`: what the receiver got (`end.sum_received.bits_per_second`), in MiB/s, and
/// the sender's retransmits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf {
    pub received_mib_s: f64,
    pub retransmits: u64,
}

pub fn iperf3(json: &str) -> Option<Iperf> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let end = v.get("end")?;
    let bits = end.get("sum_received")?.get("bits_per_second")?.as_f64()?;
    let retransmits = end
        .get("sum_sent")
        .and_then(|s| s.get("retransmits"))
        .and_then(|r| r.as_u64())
        .unwrap_or(0);
    Some(Iperf {
        received_mib_s: bits / 8.0 / 1_048_576.0,
        retransmits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BW: &str = "\
---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 65536      400              19.84              17.62                0.000282
---------------------------------------------------------------------------------------
";
    const LAT: &str = "\
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 64      1000          105.43         4012.66      139.20             151.77       88.10         398.02                 2012.91   
---------------------------------------------------------------------------------------
";

    #[test]
    fn perftest_lines_parse() {
        let bw = perftest_bw(BW, 65536).unwrap();
        assert_eq!((bw.peak_mib_s, bw.avg_mib_s), (19.84, 17.62));
        assert_eq!(perftest_bw(BW, 64), None);
        let lat = perftest_lat(LAT, 64).unwrap();
        assert_eq!(lat.typical_us, 139.20);
        assert_eq!(lat.p99_us, 398.02);
        assert_eq!(lat.min_us, 105.43);
        assert_eq!(
            perftest_lat("Couldn't connect to 10.77.0.2:18601", 64),
            None
        );
    }

    #[test]
    fn iperf_json_parses() {
        let j = r#"{"end":{"sum_sent":{"bits_per_second":1.0,"retransmits":3},
                    "sum_received":{"bits_per_second":167772160.0}}}"#;
        let i = iperf3(j).unwrap();
        assert_eq!(i.received_mib_s, 20.0);
        assert_eq!(i.retransmits, 3);
        assert_eq!(iperf3("{\"error\": \"unable to connect\"}"), None);
        assert_eq!(iperf3("not json"), None);
    }
}
