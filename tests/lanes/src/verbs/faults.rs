//! Fault injection for the verbs scenarios: a cable cut is the HCA's netdev taken
//! administratively down (PORT_ERR at once; the HCA's QPs fail with LOC_QP_OP_ERR /
//! WR_FLUSH_ERR), a restore brings it up and waits for the port to be ACTIVE with its GID
//! again. Between scenarios [`heal_links`] brings back whatever a scenario left cut.

use super::hca::{port_state_word, wait_port_ready, Hca};
use super::stamp;
use crate::netdev::set_admin_state;
use peercm_verbs_shim::scenarios::FaultInjector;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The [`FaultInjector`] a scenario gets (and the runner's own handle on the same state).
/// Log lines are kept in memory and printed between scenarios, so that writing stderr (a file
/// on the 9p lane share) never delays a scenario right after a fault.
pub struct LinkFaults {
    pub hcas: Arc<Vec<Hca>>,
    pub down: Arc<Mutex<BTreeSet<usize>>>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub t0: Instant,
}

impl LinkFaults {
    /// A second handle on the same HCAs, cut set and log.
    pub fn share(&self) -> LinkFaults {
        LinkFaults {
            hcas: self.hcas.clone(),
            down: self.down.clone(),
            log: self.log.clone(),
            t0: self.t0,
        }
    }

    fn hca(&self, i: usize) -> Result<(&Hca, &str), String> {
        let h = self
            .hcas
            .get(i)
            .ok_or_else(|| format!("no HCA #{i} (this side has {})", self.hcas.len()))?;
        let nd = h
            .netdev
            .as_deref()
            .ok_or_else(|| format!("no netdev known for {}", h.sel.device))?;
        Ok((h, nd))
    }

    fn down_set(&self) -> MutexGuard<'_, BTreeSet<usize>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, line: String) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    fn flush_log(&self) {
        let lines = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        for l in lines {
            eprintln!("{l}");
        }
    }
}

impl FaultInjector for LinkFaults {
    fn cut(&mut self, hca: usize) -> Result<(), String> {
        let (h, nd) = self.hca(hca)?;
        let dev = h.sel.device.clone();
        let nd = nd.to_string();
        self.down_set().insert(hca);
        let (took, how) = set_admin_state(&nd, false)?;
        self.note(format!(
            "[verbs-lane {}] cut hca{hca} ({dev}/{nd} admin down via {how} in {} us; port then {})",
            stamp(self.t0),
            took.as_micros(),
            port_state_word(&self.hcas[hca].sel)
        ));
        Ok(())
    }

    fn restore(&mut self, hca: usize) -> Result<(), String> {
        let (h, nd) = self.hca(hca)?;
        let h = h.clone();
        let nd = nd.to_string();
        let (took, how) = set_admin_state(&nd, true)?;
        let ready = wait_port_ready(&h, Duration::from_secs(15))?;
        self.down_set().remove(&hca);
        self.note(format!(
            "[verbs-lane {}] restored hca{hca} ({}/{nd} up via {how} in {} us, ACTIVE with GID {} ms later)",
            stamp(self.t0),
            h.sel.device,
            took.as_micros(),
            ready.as_millis()
        ));
        Ok(())
    }
}

/// Between scenarios: brings back every link a scenario left cut and checks every port is
/// ACTIVE with its GID. Returns notes for the log, or an error if a port stays unusable.
pub fn heal_links(faults: &LinkFaults) -> Result<Vec<String>, String> {
    faults.flush_log();
    let mut notes = Vec::new();
    let left: Vec<usize> = faults.down_set().iter().copied().collect();
    for i in left {
        let (h, nd) = faults.hca(i)?;
        notes.push(format!("hca{i} ({}) left cut; restored", h.sel.device));
        set_admin_state(nd, true)?;
        faults.down_set().remove(&i);
    }
    for h in faults.hcas.iter() {
        wait_port_ready(h, Duration::from_secs(15))?;
    }
    Ok(notes)
}
