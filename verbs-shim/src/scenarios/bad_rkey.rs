//! `bad_rkey`: a WRITE with a wrong rkey completes `RemAccessErr`, the next one flushes, the
//! server's MR is untouched.

use super::harness::{
    ms, pattern, run, same_bytes, Env, Exchange, OrFail, Outcome, ScenarioError, Side,
};
use super::hca::{caps, open_hca, post_send, psn_for, sge};
use super::wire::{decode_remote_mr, encode_remote_mr, K_DONE, K_MR, K_OK};
use crate::types::{Access, QpState, RemoteMr, SendWr, WcOpcode, WcStatus};
use std::time::Instant;

pub(super) const FENCE_LEN: usize = 4096;

/// A WRITE with a wrong rkey completes `RemAccessErr` at the client and the WRITE posted after
/// it flushes; the server's region stays untouched.
pub fn bad_rkey(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("bad_rkey", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, 4))?;
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, FENCE_LEN, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_DONE, "the client's writes completed")?;
                let got = mr.read(0, FENCE_LEN).or_fail(at, "reading the region")?;
                same_bytes(
                    at,
                    "the region after writes with a bad rkey (must stay zero)",
                    &got,
                    &[0; FENCE_LEN],
                )?;
                // rdma_rxe moves the responder QP to ERR on an rkey violation; not asserted.
                ctx.detail("server_qp_state", format!("{:?}", conn.qp.state()));
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, FENCE_LEN, Access::LOCAL_WRITE)?;
                local
                    .write(0, &pattern(0xBAD, FENCE_LEN))
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                let bad = RemoteMr {
                    rkey: !remote.rkey,
                    ..remote
                };
                let t0 = Instant::now();
                let write = |wr_id: u64, remote: RemoteMr| SendWr::Write {
                    wr_id,
                    local: sge(&local, 0, FENCE_LEN),
                    remote,
                    remote_offset: 0,
                    imm: None,
                };
                post_send(
                    at,
                    &conn,
                    write(1, bad),
                    "posting the write with a bad rkey",
                )?;
                post_send(at, &conn, write(2, remote), "posting the write after it")?;
                conn.scq.expect(
                    at,
                    "the write with a bad rkey",
                    1,
                    WcStatus::RemAccessErr,
                    WcOpcode::RdmaWrite,
                )?;
                let took = t0.elapsed();
                conn.scq.expect(
                    at,
                    "the write posted after the bad one",
                    2,
                    WcStatus::WrFlushErr,
                    WcOpcode::RdmaWrite,
                )?;
                let state = conn.qp.state();
                if state != QpState::Err {
                    return Err(at.err(format!(
                        "after RemAccessErr the QP should be in Err, it is in {state:?}"
                    )));
                }
                ctx.send(K_DONE, &[])?;
                ctx.recv(K_OK, "the server found its region untouched")?;
                ctx.detail("bad_rkey_status", "RemAccessErr");
                ctx.detail("next_wr_status", "WrFlushErr");
                ctx.detail("post_to_error_ms", ms(took));
            }
        }
        Ok(())
    })
}
