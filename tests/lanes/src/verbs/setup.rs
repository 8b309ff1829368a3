//! Before the first scenario: the suite to run (`--only`), this side's readiness, the
//! connection to the peer and the `hello` that checks both sides can run the same suite. If
//! either side cannot run, both report every scenario as not run within seconds.

use super::args::side_name;
use super::conn::{connect, Conn, PROTO};
use super::hca::{preflight, Hca};
use super::run::Run;
use super::stamp;
use crate::report::one_line;
use peercm_verbs_shim::api::Provider;
use peercm_verbs_shim::scenarios::{self, Scenario, Side};
use std::sync::Arc;

/// The scenarios to run, in order.
pub type Suite = Vec<(&'static str, Scenario)>;

/// Everything a run needs once both sides are ready.
pub struct Ready {
    pub conn: Conn,
    pub provider: Arc<dyn Provider>,
    pub hcas: Vec<Hca>,
}

/// The suite (the verbs-shim scenarios, then the lane's own: [`super::one_sided`]), or the
/// `--only` subset of it (in suite order).
pub fn select(only: &[String]) -> Result<Suite, String> {
    let mut all = scenarios::all();
    if all.is_empty() {
        return Err("the scenario suite is empty (scenarios::all() returned nothing)".into());
    }
    all.extend(super::one_sided::scenarios());
    all.extend(super::rekey::scenarios());
    let names: Vec<&'static str> = all.iter().map(|(n, _)| *n).collect();
    let keep = crate::cli::select(&names, only)?;
    Ok(all
        .into_iter()
        .filter(|(name, _)| keep.contains(name))
        .collect())
}

/// Checks this side, connects, exchanges `hello`. On failure every scenario is recorded as not
/// run (with why) and the result is `None`.
pub fn start(run: &mut Run, suite: &Suite) -> Option<Ready> {
    let (t0, side) = (run.t0, run.args.side);
    let names: Vec<&str> = suite.iter().map(|(n, _)| *n).collect();
    let local = preflight(&run.args);
    let local_status = match &local {
        Ok((_, hcas)) => {
            let desc: Vec<String> = hcas.iter().map(Hca::describe).collect();
            eprintln!(
                "[verbs-lane {}] {} side ready: {}; {} scenario(s): {}",
                stamp(t0),
                side_name(side),
                desc.join(", "),
                names.len(),
                names.join(" ")
            );
            "ok".to_string()
        }
        Err(e) => {
            eprintln!(
                "[verbs-lane {}] {} side NOT ready: {e}",
                stamp(t0),
                side_name(side)
            );
            format!("unusable {}", one_line(e))
        }
    };

    let mut conn = match connect(&run.args, t0) {
        Ok(c) => c,
        Err(e) => {
            let why = match &local {
                Err(le) => le.clone(),
                Ok(_) => format!("no exchange with the peer: {e}"),
            };
            run.error = Some(why.clone());
            run.fail_rest(suite, 0, &why);
            return None;
        }
    };
    // hello <proto> <side> <names,...> <ok | unusable reason...>
    let hello = format!(
        "hello {PROTO} {} {} {local_status}",
        side_name(side),
        names.join(",")
    );
    let peer_hello = conn
        .send_ctl(&hello)
        .and_then(|()| conn.wait_ctl("hello ", run.args.connect_timeout));
    let setup_error = match (&local, peer_hello) {
        (Err(le), _) => Some(le.clone()),
        (Ok(_), Err(e)) => Some(format!("no hello from the peer: {e}")),
        (Ok(_), Ok(h)) => check_hello(&h, side, &names),
    };
    match (local, setup_error) {
        (Ok((provider, hcas)), None) => Some(Ready {
            conn,
            provider,
            hcas,
        }),
        (l, e) => {
            let e = e
                .or_else(|| l.err())
                .unwrap_or_else(|| "setup failed".into());
            run.error = Some(e.clone());
            run.fail_rest(suite, 0, &e);
            let _ = conn.send_ctl("bye");
            None
        }
    }
}

/// Why the peer's `hello` rules out a run, if it does.
fn check_hello(hello: &str, side: Side, names: &[&str]) -> Option<String> {
    let parts: Vec<&str> = hello.splitn(5, ' ').collect();
    let (proto, pside, pnames, pstatus) = (
        parts.get(1).copied().unwrap_or(""),
        parts.get(2).copied().unwrap_or(""),
        parts.get(3).copied().unwrap_or(""),
        parts.get(4).copied().unwrap_or(""),
    );
    if proto != PROTO {
        Some(format!("the peer speaks {proto:?}, not {PROTO:?}"))
    } else if pside == side_name(side) {
        Some(format!("both sides are {pside}"))
    } else if pnames != names.join(",") {
        Some(format!(
            "the two sides run different suites: here [{}], peer [{pnames}]",
            names.join(",")
        ))
    } else if pstatus != "ok" {
        Some(format!(
            "the peer ({pside}) cannot run: {}",
            pstatus.strip_prefix("unusable ").unwrap_or(pstatus)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_mismatches_are_named() {
        let names = ["ping_pong", "cable_cut"];
        let ok = format!("hello {PROTO} server ping_pong,cable_cut ok");
        assert_eq!(check_hello(&ok, Side::Client, &names), None);
        let same = format!("hello {PROTO} client ping_pong,cable_cut ok");
        assert!(check_hello(&same, Side::Client, &names).is_some());
        let other = format!("hello {PROTO} server ping_pong ok");
        assert!(check_hello(&other, Side::Client, &names).is_some());
        let unusable = format!("hello {PROTO} server ping_pong,cable_cut unusable no device");
        assert_eq!(
            check_hello(&unusable, Side::Client, &names).as_deref(),
            Some("the peer (server) cannot run: no device")
        );
        assert!(check_hello("hello verbs-lane-0 server x ok", Side::Client, &names).is_some());
    }
}
