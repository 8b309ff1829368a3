//! `rdma_read`: the client reads a pattern out of the server's MR.

use super::harness::{
    mb_per_s, pattern, run, same_bytes, Env, Exchange, OrFail, Outcome, ScenarioError, Side,
};
use super::hca::{caps, open_hca, post_send, psn_for, sge};
use super::wire::{decode_remote_mr, encode_remote_mr, K_DONE, K_MR};
use crate::types::{Access, SendWr, WcOpcode, WcStatus};
use std::time::Instant;

const READ_LEN: usize = 32 * 1024;
const READ_CHUNK: usize = 4096;
const READ_TAG: u64 = 0xBEEF;

/// The client reads a pattern out of the server's MR.
pub fn rdma_read(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("rdma_read", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, 4))?;
        let want = pattern(READ_TAG, READ_LEN);
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, READ_LEN, Access::LOCAL_WRITE | Access::REMOTE_READ)?;
                mr.write(0, &want)
                    .or_fail(at, "filling the region to be read")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_DONE, "the client finished reading")?;
                ctx.detail("served_bytes", READ_LEN);
            }
            Side::Client => {
                let local = hca.reg(at, READ_LEN, Access::LOCAL_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                if remote.len < READ_LEN as u64 {
                    return Err(at.err(format!(
                        "the server's region has {} bytes, need {READ_LEN}",
                        remote.len
                    )));
                }
                let chunks = READ_LEN / READ_CHUNK;
                let t0 = Instant::now();
                for i in 0..chunks {
                    let wr = SendWr::Read {
                        wr_id: i as u64,
                        local: sge(&local, i * READ_CHUNK, READ_CHUNK),
                        remote,
                        remote_offset: (i * READ_CHUNK) as u64,
                    };
                    post_send(at, &conn, wr, &format!("posting read {i}"))?;
                }
                for i in 0..chunks {
                    conn.scq.expect(
                        at,
                        &format!("read {i}"),
                        i as u64,
                        WcStatus::Success,
                        WcOpcode::RdmaRead,
                    )?;
                }
                let took = t0.elapsed();
                let got = local
                    .read(0, READ_LEN)
                    .or_fail(at, "reading the local buffer")?;
                same_bytes(at, "the data read from the server", &got, &want)?;
                ctx.send(K_DONE, &[])?;
                ctx.detail("bytes", READ_LEN);
                ctx.detail("reads", chunks);
                ctx.detail("read_mb_per_s", mb_per_s(READ_LEN, took));
            }
        }
        Ok(())
    })
}
