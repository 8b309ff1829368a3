//! Judging the receivers' reports: every client's records all arrived, in order, intact,
//! exactly once, up to what the leader sent; and the receiver's figures (links, manager stall,
//! delivered count).

use super::{Figures, Leader};
use serde_json::Value;

impl Leader {
    /// Checks a receiver's report for one node: every client's records all arrived, in order,
    /// intact, exactly once, up to what this side sent.
    pub fn check_receiver(&self, report: &Value, node: &str, clients: &[&str]) -> Vec<String> {
        let mut p = Vec::new();
        let n = &report["nodes"][node];
        if n.is_null() {
            return vec![format!("no report from {node}: {report}")];
        }
        for c in clients {
            let s = &n["clients"][c];
            let sent = self.sent_of(c);
            let got = s["received"].as_u64().unwrap_or(0);
            let last = s["last"].as_u64().unwrap_or(0);
            for k in ["duplicates", "gaps", "bad"] {
                if s[k].as_u64().unwrap_or(0) != 0 {
                    p.push(format!("{node}/{c}: {k} = {} ({})", s[k], s["errors"]));
                }
            }
            if got != sent || last != sent {
                p.push(format!(
                    "{node}/{c}: received {got} records, last {last}; {sent} were sent"
                ));
            }
        }
        p
    }

    /// The receiver's links, longest manager stall and delivered count, as figures.
    pub fn receiver_figures(report: &Value, node: &str, f: &mut Figures) {
        let st = &report["nodes"][node]["status"];
        let links: Vec<String> = st["links"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        format!(
                            "{}@{}",
                            l["transport"].as_str().unwrap_or("?"),
                            l["interconnect"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        fig!(f, format!("{node}_links"), links.join(" "));
        fig!(
            f,
            format!("{node}_manager_max_stall"),
            report["nodes"][node]["max_status_rtt"].clone()
        );
        fig!(
            f,
            format!("{node}_delivered"),
            st["stats"]["delivered"].clone()
        );
    }
}
