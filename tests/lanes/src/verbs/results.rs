//! `verbs-lane`'s results: one line per scenario and side
//! (`scenario <name> <side>: PASS|FAIL <text> (<ms> ms)`, which verbs-lane.sh reads), and the
//! `--json` report with the same results.

use super::args::side_name;
use super::hca::Hca;
use crate::report::{verdict, write_json};
use peercm_verbs_shim::scenarios::Side;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::io;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub name: String,
    pub pass: bool,
    /// PASS: measured details; FAIL: what failed.
    pub text: String,
    pub details: Vec<(String, String)>,
    pub ms: u128,
    /// The peer's verdict on the same scenario.
    pub peer: Option<String>,
    pub notes: Vec<String>,
}

impl ScenarioResult {
    pub fn fail(name: &str, text: impl Into<String>) -> ScenarioResult {
        ScenarioResult {
            name: name.to_string(),
            pass: false,
            text: text.into(),
            details: Vec::new(),
            ms: 0,
            peer: None,
            notes: Vec::new(),
        }
    }

    /// `scenario <name> <side>: PASS|FAIL <text>; note: ...; peer: ... (<ms> ms)`.
    pub fn line(&self, side: Side) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.text.is_empty() {
            parts.push(self.text.clone());
        }
        parts.extend(self.notes.iter().map(|n| format!("note: {n}")));
        if let Some(p) = self.peer.as_deref().filter(|p| !p.starts_with("PASS")) {
            parts.push(format!("peer: {p}"));
        }
        let text = parts.join("; ");
        let sep = if text.is_empty() { "" } else { " " };
        format!(
            "scenario {} {}: {}{sep}{text} ({} ms)",
            self.name,
            side_name(side),
            verdict(self.pass),
            self.ms
        )
    }
}

/// The `--json` report of one side.
pub struct Report<'a> {
    pub side: Side,
    pub hcas: &'a [Hca],
    pub error: Option<&'a str>,
    pub results: &'a [ScenarioResult],
    pub wall: Duration,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    side: &'static str,
    hcas: Vec<HcaJson<'a>>,
    error: Option<&'a str>,
    passed: usize,
    failed: usize,
    wall_ms: u128,
    scenarios: Vec<ScenarioJson<'a>>,
}

#[derive(Serialize)]
struct HcaJson<'a> {
    device: &'a str,
    port: u8,
    gid_index: u8,
    netdev: Option<&'a str>,
    gid: Option<&'a str>,
}

#[derive(Serialize)]
struct ScenarioJson<'a> {
    name: &'a str,
    status: &'static str,
    ms: u128,
    details: Details<'a>,
    error: Option<&'a str>,
    peer: Option<&'a str>,
    notes: &'a [String],
}

/// A scenario's details as a JSON object, in the scenario's order.
struct Details<'a>(&'a [(String, String)]);

impl Serialize for Details<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Report<'_> {
    fn to_json(&self) -> ReportJson<'_> {
        let passed = self.results.iter().filter(|s| s.pass).count();
        ReportJson {
            side: side_name(self.side),
            hcas: self
                .hcas
                .iter()
                .map(|h| HcaJson {
                    device: &h.sel.device,
                    port: h.sel.port,
                    gid_index: h.sel.gid_index,
                    netdev: h.netdev.as_deref(),
                    gid: h.gid.as_deref(),
                })
                .collect(),
            error: self.error,
            passed,
            failed: self.results.len() - passed,
            wall_ms: self.wall.as_millis(),
            scenarios: self
                .results
                .iter()
                .map(|s| ScenarioJson {
                    name: &s.name,
                    status: verdict(s.pass),
                    ms: s.ms,
                    details: Details(&s.details),
                    error: (!s.pass).then_some(s.text.as_str()),
                    peer: s.peer.as_deref(),
                    notes: &s.notes,
                })
                .collect(),
        }
    }

    /// Writes the report to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        write_json(path, &self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercm_verbs_shim::scenarios::HcaSel;

    #[test]
    fn lines_and_json_carry_every_field() {
        let mut r = ScenarioResult::fail("cable_cut", "no PortError");
        r.ms = 12;
        r.notes.push("hca0 (rxe0) left cut; restored".into());
        r.peer = Some("FAIL the client failed".into());
        assert_eq!(
            r.line(Side::Server),
            "scenario cable_cut server: FAIL no PortError; note: hca0 (rxe0) left cut; \
             restored; peer: FAIL the client failed (12 ms)"
        );
        let ok = ScenarioResult {
            name: "ping_pong".into(),
            pass: true,
            text: String::new(),
            details: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
            ms: 3,
            peer: Some("PASS".into()),
            notes: Vec::new(),
        };
        assert_eq!(
            ok.line(Side::Client),
            "scenario ping_pong client: PASS (3 ms)"
        );
        let hcas = [Hca {
            sel: HcaSel {
                device: "rxe0".into(),
                port: 1,
                gid_index: 1,
            },
            netdev: Some("eth0".into()),
            gid: None,
        }];
        let results = [ok, r];
        let report = Report {
            side: Side::Client,
            hcas: &hcas,
            error: None,
            results: &results,
            wall: Duration::from_millis(1500),
        };
        let v = serde_json::to_value(report.to_json()).unwrap();
        assert_eq!(v["side"], "client");
        assert_eq!(v["passed"], 1);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["wall_ms"], 1500);
        assert_eq!(v["hcas"][0]["netdev"], "eth0");
        assert!(v["hcas"][0]["gid"].is_null());
        assert_eq!(v["scenarios"][0]["details"]["z"], "1");
        assert!(v["scenarios"][0]["error"].is_null());
        assert_eq!(v["scenarios"][1]["error"], "no PortError");
        assert_eq!(v["scenarios"][1]["status"], "FAIL");
        // Details keep the scenario's order.
        let text = serde_json::to_string(&report.to_json()).unwrap();
        assert!(text.find("\"z\"").unwrap() < text.find("\"a\"").unwrap());
    }
}
