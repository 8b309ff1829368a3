//! `deregistered_mr`: after the server deregisters its MR a WRITE completes `RemAccessErr` (the
//! fencing primitive), and the region keeps the first write's bytes.

use super::bad_rkey::FENCE_LEN;
use super::harness::{
    ms, pattern, run, same_bytes, Env, Exchange, OrFail, Outcome, ScenarioError, Side,
};
use super::hca::{caps, open_hca, post_send, psn_for, sge};
use super::wire::{decode_remote_mr, encode_remote_mr, K_DONE, K_INFO, K_MR, K_OK};
use crate::types::{Access, SendWr, WcOpcode, WcStatus};
use std::time::Instant;

/// Fencing: a WRITE works, the server deregisters its region, the next WRITE completes
/// `RemAccessErr` and the region keeps the first write's bytes.
pub fn deregistered_mr(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("deregistered_mr", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, 4))?;
        let first = pattern(0xF1, FENCE_LEN);
        let second = pattern(0xF2, FENCE_LEN);
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, FENCE_LEN, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_INFO, "the client's first write completed")?;
                let got = mr.read(0, FENCE_LEN).or_fail(at, "reading the region")?;
                same_bytes(at, "the region after the first write", &got, &first)?;
                let t = Instant::now();
                mr.deregister().or_fail(at, "deregistering the region")?;
                ctx.detail(
                    "deregister_us",
                    format!("{:.0}", t.elapsed().as_secs_f64() * 1e6),
                );
                ctx.send(K_INFO, b"fenced")?;
                ctx.recv(K_DONE, "the client's write after the fence completed")?;
                // The object still owns its buffer; if the backend lets us read it after
                // deregistration, it must hold the first write's bytes only.
                match mr.read(0, FENCE_LEN) {
                    Ok(after) => {
                        same_bytes(
                            at,
                            "the fenced region (the write after the fence must not land)",
                            &after,
                            &first,
                        )?;
                        ctx.detail("fenced_region", "unchanged");
                    }
                    Err(e) => ctx.detail(
                        "fenced_region",
                        format!("not readable after deregistration ({e})"),
                    ),
                }
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, 2 * FENCE_LEN, Access::LOCAL_WRITE)?;
                local
                    .write(0, &first)
                    .or_fail(at, "filling the source buffer")?;
                local
                    .write(FENCE_LEN, &second)
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                let write = |wr_id: u64, offset: usize| SendWr::Write {
                    wr_id,
                    local: sge(&local, offset, FENCE_LEN),
                    remote,
                    remote_offset: 0,
                    imm: None,
                };
                post_send(at, &conn, write(1, 0), "posting the write before the fence")?;
                conn.scq.expect(
                    at,
                    "the write before the fence",
                    1,
                    WcStatus::Success,
                    WcOpcode::RdmaWrite,
                )?;
                ctx.send(K_INFO, b"written")?;
                ctx.recv(K_INFO, "the server deregistered its region")?;
                let t0 = Instant::now();
                post_send(
                    at,
                    &conn,
                    write(2, FENCE_LEN),
                    "posting the write after the fence",
                )?;
                conn.scq.expect(
                    at,
                    "the write into the deregistered region",
                    2,
                    WcStatus::RemAccessErr,
                    WcOpcode::RdmaWrite,
                )?;
                let took = t0.elapsed();
                ctx.send(K_DONE, &[])?;
                ctx.recv(K_OK, "the server found its fenced region unchanged")?;
                ctx.detail("fenced_write_status", "RemAccessErr");
                ctx.detail("client_qp_state", format!("{:?}", conn.qp.state()));
                ctx.detail("post_to_error_ms", ms(took));
            }
        }
        Ok(())
    })
}
