//! `cable_cut`: two HCAs; cutting HCA0 raises `PortError`, fails QP0's requests, QP1 keeps
//! working; restore raises `PortActive`, QP0 stays in ERR and a fresh QP on HCA0 works.

use super::harness::{
    ms, pattern, per_s, run, same_bytes, At, Ctx, Env, Exchange, OrFail, Outcome, ScenarioError,
    Side, EVENT_TIMEOUT,
};
use super::hca::{caps, open_hca, post_recv, post_send, psn_for, sge, Conn, Hca};
use super::wire::{K_DONE, K_INFO, K_OK};
use crate::api::{Device, MemoryRegion};
use crate::types::{Access, AsyncEvent, QpState, SendWr, WcOpcode, WcStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CUT_PHASE: usize = 16;
const CUT_INFLIGHT: usize = 8;
const CUT_MSG: usize = 256;
/// Receive slots per QP on the server: two phases, the in-flight burst and a probe.
const CUT_SLOTS: usize = 2 * CUT_PHASE + CUT_INFLIGHT + 4;

/// Payload of message `seq` on `hca` in `phase` (0: before the cut, 1: after, 2: fresh QP).
fn cut_msg(hca: usize, phase: u8, seq: usize) -> Vec<u8> {
    let mut m = pattern(
        ((seq as u64) << 8) | ((hca as u64) << 4) | u64::from(phase),
        CUT_MSG,
    );
    m[0..4].copy_from_slice(&(seq as u32).to_le_bytes());
    m[4] = hca as u8;
    m[5] = phase;
    m
}

fn wr_id(hca: usize, seq: usize) -> u64 {
    ((hca as u64) << 32) | seq as u64
}

/// Statuses accepted for QP0's requests once its HCA is cut.
const CUT_ERRORS: [WcStatus; 3] = [
    WcStatus::LocQpOpErr,
    WcStatus::WrFlushErr,
    WcStatus::RetryExcErr,
];

fn summarize(statuses: &[WcStatus]) -> String {
    let mut out: Vec<(WcStatus, usize)> = Vec::new();
    for s in statuses {
        match out.iter_mut().find(|(k, _)| k == s) {
            Some((_, n)) => *n += 1,
            None => out.push((*s, 1)),
        }
    }
    out.iter()
        .map(|(s, n)| format!("{n}x{s:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// QP0's completions around the cut.
#[derive(Default)]
struct Tally {
    statuses: Vec<WcStatus>,
    successes: usize,
    first_error: Option<(WcStatus, Duration)>,
}

impl Tally {
    /// Takes the completion of message `seq`: successes may only precede the first error, and
    /// errors must be one of [`CUT_ERRORS`].
    fn collect(
        &mut self,
        at: At,
        conn: &mut Conn,
        seq: usize,
        wait: Duration,
        t_cut: Instant,
    ) -> Result<(), ScenarioError> {
        let what = format!("HCA0 message {seq} (posted around the cut)");
        let wc = conn
            .scq
            .next(at, wait)?
            .ok_or_else(|| at.err(format!("{what}: no completion within {wait:?} of the cut")))?;
        if wc.wr_id != wr_id(0, seq) {
            return Err(at.err(format!(
                "{what}: expected wr_id {:#x}, got {:#x} ({:?})",
                wr_id(0, seq),
                wc.wr_id,
                wc.status
            )));
        }
        self.statuses.push(wc.status);
        match (wc.status, self.first_error) {
            (WcStatus::Success, None) => self.successes += 1,
            (WcStatus::Success, Some((s, _))) => {
                return Err(at.err(format!(
                    "{what}: completed Success after an earlier request failed {s:?}"
                )))
            }
            (s, _) if !CUT_ERRORS.contains(&s) => {
                return Err(at.err(format!("{what}: expected one of {CUT_ERRORS:?}, got {s:?}")))
            }
            (s, None) => self.first_error = Some((s, t_cut.elapsed())),
            (_, Some(_)) => {}
        }
        Ok(())
    }
}

/// Waits for an event matching `want`; returns it with the events skipped on the way.
fn wait_event(
    at: At,
    dev: &Arc<dyn Device>,
    what: &str,
    want: impl Fn(&AsyncEvent) -> bool,
) -> Result<(AsyncEvent, Vec<AsyncEvent>), ScenarioError> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match dev
            .next_async_event(left)
            .or_fail(at, &format!("waiting for {what}"))?
        {
            Some(e) if want(&e) => return Ok((e, skipped)),
            Some(e) => skipped.push(e),
            None => {
                return Err(at.err(format!(
                    "expected {what} within {EVENT_TIMEOUT:?}, got {}",
                    if skipped.is_empty() {
                        "no event".to_string()
                    } else {
                        format!("only {skipped:?}")
                    }
                )))
            }
        }
    }
}

/// The server checks each message on a QP arrives complete and in sequence.
fn expect_msg(
    at: At,
    conn: &mut Conn,
    slots: &Arc<dyn MemoryRegion>,
    hca: usize,
    phase: u8,
    seq: usize,
    slot: usize,
) -> Result<(), ScenarioError> {
    let what = format!("HCA{hca} phase {phase} message {seq}");
    let wc = conn
        .rcq
        .expect(at, &what, slot as u64, WcStatus::Success, WcOpcode::Recv)?;
    if wc.byte_len as usize != CUT_MSG {
        return Err(at.err(format!(
            "{what}: expected {CUT_MSG} bytes, got {}",
            wc.byte_len
        )));
    }
    let got = slots
        .read(slot * CUT_MSG, CUT_MSG)
        .or_fail(at, "reading a receive slot")?;
    same_bytes(at, &what, &got, &cut_msg(hca, phase, seq))
}

/// Two HCAs, one QP pair each. The client streams on both, cuts HCA0: `PortError` on HCA0,
/// QP0's requests fail (`LocQpOpErr`, `WrFlushErr` or `RetryExcErr`), QP1 keeps delivering;
/// after restore `PortActive` on HCA0, QP0 stays in ERR, and a fresh QP pair on HCA0 works.
pub fn cable_cut(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("cable_cut", env, ex, |ctx, env| {
        let at = ctx.at;
        if env.params.retry_count > 6 {
            return Err(at.err(format!(
                "cable_cut needs retry_count <= 6 (rdma_rxe retries 7 forever), got {}",
                env.params.retry_count
            )));
        }
        let hcas = [open_hca(at, env, 0)?, open_hca(at, env, 1)?];
        let c = caps(64, CUT_SLOTS as u32 + 4);
        let mut conns = vec![hcas[0].conn(at, c)?, hcas[1].conn(at, c)?];
        match env.side {
            Side::Client => cut_client(ctx, env, &hcas, &mut conns),
            Side::Server => cut_server(ctx, env, &hcas, &mut conns),
        }
    })
}

fn cut_client(
    ctx: &mut Ctx<'_>,
    env: &mut Env,
    hcas: &[Hca; 2],
    conns: &mut [Conn],
) -> Result<(), ScenarioError> {
    let at = ctx.at;
    let bufs = [
        hcas[0].reg(at, (CUT_SLOTS + CUT_PHASE) * CUT_MSG, Access::LOCAL_WRITE)?,
        hcas[1].reg(at, (CUT_SLOTS + CUT_PHASE) * CUT_MSG, Access::LOCAL_WRITE)?,
    ];
    // Source slot `seq` of HCA `h` holds message (h, phase, seq).
    let send =
        |conn: &Conn, h: usize, phase: u8, seq: usize, slot: usize| -> Result<(), ScenarioError> {
            bufs[h]
                .write(slot * CUT_MSG, &cut_msg(h, phase, seq))
                .or_fail(at, "filling a send slot")?;
            post_send(
                at,
                conn,
                SendWr::Send {
                    wr_id: wr_id(h, seq),
                    local: sge(&bufs[h], slot * CUT_MSG, CUT_MSG),
                    imm: None,
                },
                &format!("posting HCA{h} message {seq}"),
            )
        };
    for (h, conn) in conns.iter_mut().enumerate() {
        hcas[h].connect(ctx, conn, psn_for(Side::Client, h as u32))?;
    }
    ctx.sync("cable_cut: receives posted")?;

    // Phase A: both QPs deliver.
    for seq in 0..CUT_PHASE {
        for (h, conn) in conns.iter_mut().enumerate() {
            send(conn, h, 0, seq, seq)?;
            conn.scq.expect(
                at,
                &format!("HCA{h} message {seq} before the cut"),
                wr_id(h, seq),
                WcStatus::Success,
                WcOpcode::Send,
            )?;
        }
    }
    let mut early = Vec::new();
    while let Some(e) = hcas[0]
        .dev
        .next_async_event(Duration::ZERO)
        .or_fail(at, "draining events")?
    {
        early.push(e);
    }
    if !early.is_empty() {
        ctx.detail("events_before_cut", format!("{early:?}"));
    }

    // The cut, with a burst in flight on QP0.
    for k in 0..CUT_INFLIGHT {
        let seq = CUT_PHASE + k;
        send(&conns[0], 0, 1, seq, seq)?;
    }
    let t_cut = Instant::now();
    env.faults
        .cut(0)
        .map_err(|e| at.err(format!("cutting HCA0: {e}")))?;
    let port0 = hcas[0].params.port;
    let (_, skipped) = wait_event(
        at,
        &hcas[0].dev,
        &format!("PortError on {}", hcas[0].label),
        |e| *e == AsyncEvent::PortError { port: port0 },
    )?;
    let cut_to_port_error = t_cut.elapsed();
    if !skipped.is_empty() {
        ctx.detail("events_before_port_error", format!("{skipped:?}"));
    }

    // QP0: every request completes; once one fails the rest fail too.
    let timeout = env.params.ack_timeout_us.max(1);
    let fail_wait = Duration::from_micros(timeout) * (u32::from(env.params.retry_count) + 1) * 2
        + Duration::from_secs(2);
    let mut tally = Tally::default();
    for k in 0..CUT_INFLIGHT {
        tally.collect(at, &mut conns[0], CUT_PHASE + k, fail_wait, t_cut)?;
    }
    let mut probed = false;
    if tally.first_error.is_none() {
        // The burst made it out before the link went: the next request must fail.
        let seq = CUT_PHASE + CUT_INFLIGHT;
        send(&conns[0], 0, 1, seq, seq)?;
        tally.collect(at, &mut conns[0], seq, fail_wait, t_cut)?;
        probed = true;
    }
    let Some((first_status, cut_to_error)) = tally.first_error else {
        return Err(at.err(
            "HCA0's QP kept completing successfully after the cut (expected an error completion)",
        ));
    };
    let (statuses, successes) = (tally.statuses, tally.successes);

    // Phase B: QP1 keeps delivering.
    let t_b = Instant::now();
    for seq in CUT_PHASE..2 * CUT_PHASE {
        send(&conns[1], 1, 1, seq, seq)?;
        conns[1].scq.expect(
            at,
            &format!("HCA1 message {seq} after HCA0 was cut"),
            wr_id(1, seq),
            WcStatus::Success,
            WcOpcode::Send,
        )?;
    }
    let phase_b = t_b.elapsed();
    ctx.send_u64s(K_INFO, &[successes as u64, u64::from(probed)])?;
    let server = ctx.recv_u64s(K_OK, "the server verified HCA1's messages after the cut", 2)?;

    // Restore: PortActive, QP0 stays errored.
    let t_restore = Instant::now();
    env.faults
        .restore(0)
        .map_err(|e| at.err(format!("restoring HCA0: {e}")))?;
    wait_event(
        at,
        &hcas[0].dev,
        &format!("PortActive on {}", hcas[0].label),
        |e| *e == AsyncEvent::PortActive { port: port0 },
    )?;
    let restore_to_active = t_restore.elapsed();
    // On rdma_rxe the IPv4 GID may come back a little after the port: wait for it.
    let gid_index = hcas[0].params.gid_index;
    let gid_deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match hcas[0].dev.gid(port0, gid_index) {
            Ok(g) if g != [0; 16] => break,
            other if Instant::now() >= gid_deadline => {
                return Err(at.err(format!(
                "GID {gid_index} of {} not back within {EVENT_TIMEOUT:?} of the restore: {other:?}",
                hcas[0].label
            )))
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let restore_to_gid = t_restore.elapsed();
    let qp0_state = conns[0].qp.state();
    if qp0_state != QpState::Err {
        return Err(at.err(format!(
            "after its requests failed, HCA0's old QP should stay in Err, it is in {qp0_state:?}"
        )));
    }

    // A fresh QP pair on HCA0.
    let mut fresh = hcas[0].conn(at, caps(64, 4))?;
    hcas[0].connect(ctx, &mut fresh, psn_for(Side::Client, 7))?;
    ctx.sync("cable_cut: fresh QP ready")?;
    let t_fresh = Instant::now();
    for seq in 0..CUT_PHASE {
        let slot = CUT_SLOTS + seq;
        send(&fresh, 0, 2, seq, slot)?;
        fresh.scq.expect(
            at,
            &format!("fresh HCA0 QP message {seq}"),
            wr_id(0, seq),
            WcStatus::Success,
            WcOpcode::Send,
        )?;
    }
    let fresh_took = t_fresh.elapsed();
    ctx.send(K_DONE, &[])?;
    ctx.recv(K_OK, "the server verified the fresh QP's messages")?;

    ctx.detail("phase_a_msgs_per_qp", CUT_PHASE);
    ctx.detail("in_flight_at_cut", CUT_INFLIGHT);
    ctx.detail("cut_to_port_error_ms", ms(cut_to_port_error));
    ctx.detail("cut_to_first_error_ms", ms(cut_to_error));
    ctx.detail("first_error_status", format!("{first_status:?}"));
    ctx.detail("qp0_completions", summarize(&statuses));
    ctx.detail("qp0_probe_needed", probed);
    ctx.detail("server_qp0_received_after_phase_a", server[0]);
    ctx.detail("qp1_after_cut_msgs", CUT_PHASE);
    ctx.detail("qp1_after_cut_msgs_per_s", per_s(CUT_PHASE, phase_b));
    ctx.detail("restore_to_port_active_ms", ms(restore_to_active));
    ctx.detail("restore_to_gid_ms", ms(restore_to_gid));
    ctx.detail("fresh_qp_msgs", CUT_PHASE);
    ctx.detail("fresh_qp_msgs_per_s", per_s(CUT_PHASE, fresh_took));
    Ok(())
}

fn cut_server(
    ctx: &mut Ctx<'_>,
    env: &mut Env,
    hcas: &[Hca; 2],
    conns: &mut [Conn],
) -> Result<(), ScenarioError> {
    let at = ctx.at;
    let _ = &env.faults; // only the client injects faults
    let slots = [
        hcas[0].reg(at, CUT_SLOTS * CUT_MSG, Access::LOCAL_WRITE)?,
        hcas[1].reg(at, CUT_SLOTS * CUT_MSG, Access::LOCAL_WRITE)?,
    ];
    for (h, conn) in conns.iter().enumerate() {
        for slot in 0..CUT_SLOTS {
            post_recv(
                at,
                conn,
                slot as u64,
                sge(&slots[h], slot * CUT_MSG, CUT_MSG),
            )?;
        }
    }
    for (h, conn) in conns.iter_mut().enumerate() {
        hcas[h].connect(ctx, conn, psn_for(Side::Server, h as u32))?;
    }
    ctx.sync("cable_cut: receives posted")?;

    // Phase A on both, then QP1's messages after the cut.
    for seq in 0..CUT_PHASE {
        for (h, conn) in conns.iter_mut().enumerate() {
            expect_msg(at, conn, &slots[h], h, 0, seq, seq)?;
        }
    }
    for seq in CUT_PHASE..2 * CUT_PHASE {
        expect_msg(at, &mut conns[1], &slots[1], 1, 1, seq, seq)?;
    }
    let info = ctx.recv_u64s(K_INFO, "the client's view of HCA0 after the cut", 2)?;
    let (client_successes, probed) = (info[0] as usize, info[1] != 0);

    // QP0 after phase A: whatever arrived must be in sequence, and at least what the client
    // saw acknowledged. (If both ends went down, the rest of our receives are flushed.)
    let mut received = 0usize;
    let mut flushed = 0usize;
    let quiet = Duration::from_millis(50);
    while let Some(wc) = conns[0].rcq.next(at, quiet)? {
        match wc.status {
            WcStatus::Success => {
                let seq = CUT_PHASE + received;
                let slot = seq;
                if wc.wr_id != slot as u64 {
                    return Err(at.err(format!(
                        "HCA0 after the cut: expected receive {slot} next, got {} ({:?})",
                        wc.wr_id, wc.status
                    )));
                }
                let got = slots[0].read(slot * CUT_MSG, CUT_MSG).or_fail(at, "reading a receive slot")?;
                same_bytes(at, &format!("HCA0 message {seq} around the cut"), &got, &cut_msg(0, 1, seq))?;
                received += 1;
            }
            WcStatus::WrFlushErr => flushed += 1,
            other => {
                return Err(at.err(format!(
                    "HCA0 after the cut: a receive completed {other:?} (expected Success or WrFlushErr)"
                )))
            }
        }
    }
    let most = CUT_INFLIGHT + usize::from(probed);
    if received < client_successes || received > most {
        return Err(at.err(format!(
            "HCA0 after the cut: received {received} messages, but the client saw {client_successes} acknowledged \
             (expected between that and {most})"
        )));
    }
    ctx.send_u64s(K_OK, &[received as u64, flushed as u64])?;

    // The fresh QP pair on HCA0.
    let mut fresh = hcas[0].conn(at, caps(16, CUT_PHASE as u32 + 4))?;
    let fslots = hcas[0].reg(at, CUT_PHASE * CUT_MSG, Access::LOCAL_WRITE)?;
    for slot in 0..CUT_PHASE {
        post_recv(
            at,
            &fresh,
            slot as u64,
            sge(&fslots, slot * CUT_MSG, CUT_MSG),
        )?;
    }
    hcas[0].connect(ctx, &mut fresh, psn_for(Side::Server, 7))?;
    ctx.sync("cable_cut: fresh QP ready")?;
    for seq in 0..CUT_PHASE {
        expect_msg(at, &mut fresh, &fslots, 0, 2, seq, seq)?;
    }
    ctx.recv(K_DONE, "the client finished on the fresh QP")?;
    ctx.send(K_OK, &[])?;
    ctx.detail("qp0_received_after_phase_a", received);
    ctx.detail("qp0_receives_flushed", flushed);
    ctx.detail("qp1_verified_msgs", 2 * CUT_PHASE);
    ctx.detail("fresh_qp_verified_msgs", CUT_PHASE);
    ctx.detail("old_qp0_state", format!("{:?}", conns[0].qp.state()));
    Ok(())
}
