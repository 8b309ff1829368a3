//! `rdma_write`: the client writes a pattern into the server's MR; the server verifies it
//! after "done".

use super::harness::{
    mb_per_s, ms, pattern, run, same_bytes, Env, Exchange, OrFail, Outcome, ScenarioError, Side,
};
use super::hca::{caps, open_hca, post_send, psn_for, sge};
use super::wire::{decode_remote_mr, encode_remote_mr, K_DONE, K_MR, K_OK};
use crate::types::{Access, SendWr, WcOpcode, WcStatus};
use std::time::Instant;

const WRITE_LEN: usize = 64 * 1024;
const WRITE_CHUNK: usize = 4096;
const WRITE_TAG: u64 = 0xA11CE;

/// The client writes a pattern into the server's MR; the server verifies it after "done".
pub fn rdma_write(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("rdma_write", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(64, 4))?;
        let want = pattern(WRITE_TAG, WRITE_LEN);
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, WRITE_LEN, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_DONE, "the client finished writing")?;
                let got = mr
                    .read(0, WRITE_LEN)
                    .or_fail(at, "reading the written region")?;
                same_bytes(at, "the region the client wrote", &got, &want)?;
                ctx.detail("verified_bytes", WRITE_LEN);
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, WRITE_LEN, Access::LOCAL_WRITE)?;
                local
                    .write(0, &want)
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                if remote.len < WRITE_LEN as u64 {
                    return Err(at.err(format!(
                        "the server's region has {} bytes, need {WRITE_LEN}",
                        remote.len
                    )));
                }
                let chunks = WRITE_LEN / WRITE_CHUNK;
                let t0 = Instant::now();
                for i in 0..chunks {
                    let wr = SendWr::Write {
                        wr_id: i as u64,
                        local: sge(&local, i * WRITE_CHUNK, WRITE_CHUNK),
                        remote,
                        remote_offset: (i * WRITE_CHUNK) as u64,
                        imm: None,
                    };
                    post_send(at, &conn, wr, &format!("posting write {i}"))?;
                }
                for i in 0..chunks {
                    conn.scq.expect(
                        at,
                        &format!("write {i}"),
                        i as u64,
                        WcStatus::Success,
                        WcOpcode::RdmaWrite,
                    )?;
                }
                let took = t0.elapsed();
                ctx.send(K_DONE, &[])?;
                ctx.recv(K_OK, "the server verified the data")?;
                ctx.detail("bytes", WRITE_LEN);
                ctx.detail("writes", chunks);
                ctx.detail("write_mb_per_s", mb_per_s(WRITE_LEN, took));
                ctx.detail("write_ms", ms(took));
            }
        }
        Ok(())
    })
}
