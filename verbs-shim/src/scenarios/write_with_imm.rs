//! `write_with_imm`: the server gets `RecvRdmaWithImm` with the right immediate and length, and
//! the data (only the data) in its MR.

use super::harness::{
    ms, pattern, run, same_bytes, Env, Exchange, OrFail, Outcome, ScenarioError, Side,
};
use super::hca::{caps, open_hca, post_recv, post_send, psn_for, sge};
use super::wire::{decode_remote_mr, encode_remote_mr, K_MR, K_OK};
use crate::types::{Access, SendWr, WcOpcode, WcStatus};
use std::time::Instant;

const IMM_WRITES: usize = 4;
const IMM_LEN: usize = 1024;
const IMM_STRIDE: usize = 4096;
const IMM_SKEW: usize = 100;
const IMM_BASE: u32 = 0xC0DE_0000;

fn imm_image() -> Vec<u8> {
    let mut image = vec![0u8; IMM_WRITES * IMM_STRIDE];
    for i in 0..IMM_WRITES {
        let o = i * IMM_STRIDE + IMM_SKEW;
        image[o..o + IMM_LEN].copy_from_slice(&pattern(0x1A4 + i as u64, IMM_LEN));
    }
    image
}

/// WRITE_WITH_IMM: the server gets `RecvRdmaWithImm` with the immediate and length, and the
/// data (only the data) in its MR.
pub fn write_with_imm(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("write_with_imm", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, IMM_WRITES as u32 + 4))?;
        let image = imm_image();
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, image.len(), Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                let rbuf = hca.reg(at, IMM_WRITES * 16, Access::LOCAL_WRITE)?;
                for i in 0..IMM_WRITES {
                    post_recv(at, &conn, 100 + i as u64, sge(&rbuf, i * 16, 16))?;
                }
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                for i in 0..IMM_WRITES {
                    let what = format!("receive for write-with-immediate {i}");
                    let wc = conn.rcq.expect(
                        at,
                        &what,
                        100 + i as u64,
                        WcStatus::Success,
                        WcOpcode::RecvRdmaWithImm,
                    )?;
                    let want_imm = IMM_BASE + i as u32;
                    if wc.imm != Some(want_imm) || wc.byte_len as usize != IMM_LEN {
                        return Err(at.err(format!(
                            "{what}: expected imm {want_imm:#x} byte_len {IMM_LEN}, got imm {:?} byte_len {}",
                            wc.imm.map(|v| format!("{v:#x}")),
                            wc.byte_len
                        )));
                    }
                }
                let got = mr
                    .read(0, image.len())
                    .or_fail(at, "reading the written region")?;
                same_bytes(
                    at,
                    "the region after the writes (written ranges and zeros around them)",
                    &got,
                    &image,
                )?;
                ctx.detail("immediates_verified", IMM_WRITES);
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, image.len(), Access::LOCAL_WRITE)?;
                local
                    .write(0, &image)
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                let t0 = Instant::now();
                for i in 0..IMM_WRITES {
                    let o = i * IMM_STRIDE + IMM_SKEW;
                    let wr = SendWr::Write {
                        wr_id: i as u64,
                        local: sge(&local, o, IMM_LEN),
                        remote,
                        remote_offset: o as u64,
                        imm: Some(IMM_BASE + i as u32),
                    };
                    post_send(at, &conn, wr, &format!("posting write-with-immediate {i}"))?;
                }
                for i in 0..IMM_WRITES {
                    conn.scq.expect(
                        at,
                        &format!("write-with-immediate {i}"),
                        i as u64,
                        WcStatus::Success,
                        WcOpcode::RdmaWrite,
                    )?;
                }
                let took = t0.elapsed();
                ctx.recv(K_OK, "the server verified immediates and data")?;
                ctx.detail("writes_with_imm", IMM_WRITES);
                ctx.detail("write_ms", ms(took));
            }
        }
        Ok(())
    })
}
