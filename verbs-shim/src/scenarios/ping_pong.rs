//! `ping_pong`: SENDs both ways with receives pre-posted, contents and the client's immediates
//! checked; reports round trips per second.

use super::harness::{
    pattern, per_s, run, same_bytes, Ctx, Env, Exchange, OrFail, Outcome, ScenarioError, Side,
};
use super::hca::{caps, open_hca, post_recv, post_send, psn_for, sge, Conn};
use crate::types::{Access, SendWr, WcOpcode, WcStatus};
use std::time::{Duration, Instant};

const PING_ROUNDS: usize = 100;
const PING_LEN: usize = 64;

fn ping_msg(from: Side, i: usize) -> Vec<u8> {
    let tag = match from {
        Side::Client => 0x1000_0000,
        Side::Server => 0x2000_0000,
    };
    pattern(tag + i as u64, PING_LEN)
}

/// SENDs both ways with receives pre-posted; contents (and the client's immediates) checked.
pub fn ping_pong(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("ping_pong", env, ex, |ctx, env| {
        let at = ctx.at;
        let side = env.side;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, PING_ROUNDS as u32 + 4))?;
        let rmr = hca.reg(at, PING_ROUNDS * PING_LEN, Access::LOCAL_WRITE)?;
        let smr = hca.reg(at, PING_LEN, Access::LOCAL_WRITE)?;
        for i in 0..PING_ROUNDS {
            post_recv(at, &conn, i as u64, sge(&rmr, i * PING_LEN, PING_LEN))?;
        }
        hca.connect(ctx, &mut conn, psn_for(side, 0))?;
        ctx.sync("ping_pong: receives posted")?;
        let peer = match side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        let (mut rtt_min, mut rtt_max) = (Duration::MAX, Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..PING_ROUNDS {
            let round = Instant::now();
            let send = |ctx: &mut Ctx<'_>, conn: &mut Conn| -> Result<(), ScenarioError> {
                smr.write(0, &ping_msg(side, i))
                    .or_fail(ctx.at, "filling the send buffer")?;
                let imm = (side == Side::Client).then_some(i as u32);
                post_send(
                    ctx.at,
                    conn,
                    SendWr::Send {
                        wr_id: i as u64,
                        local: sge(&smr, 0, PING_LEN),
                        imm,
                    },
                    &format!("posting send {i}"),
                )?;
                conn.scq.expect(
                    ctx.at,
                    &format!("send {i}"),
                    i as u64,
                    WcStatus::Success,
                    WcOpcode::Send,
                )?;
                Ok(())
            };
            let recv = |ctx: &mut Ctx<'_>, conn: &mut Conn| -> Result<(), ScenarioError> {
                let what = format!("receive {i}");
                let wc =
                    conn.rcq
                        .expect(ctx.at, &what, i as u64, WcStatus::Success, WcOpcode::Recv)?;
                let want_imm = (peer == Side::Client).then_some(i as u32);
                if wc.byte_len as usize != PING_LEN || wc.imm != want_imm {
                    return Err(ctx.at.err(format!(
                        "{what}: expected byte_len {PING_LEN} imm {want_imm:?}, got byte_len {} imm {:?}",
                        wc.byte_len, wc.imm
                    )));
                }
                let got = rmr
                    .read(i * PING_LEN, PING_LEN)
                    .or_fail(ctx.at, "reading the receive buffer")?;
                same_bytes(ctx.at, &what, &got, &ping_msg(peer, i))
            };
            if side == Side::Client {
                send(ctx, &mut conn)?;
                recv(ctx, &mut conn)?;
            } else {
                recv(ctx, &mut conn)?;
                send(ctx, &mut conn)?;
            }
            let rtt = round.elapsed();
            rtt_min = rtt_min.min(rtt);
            rtt_max = rtt_max.max(rtt);
        }
        let total = t0.elapsed();
        ctx.sync("ping_pong: done")?;
        ctx.detail("round_trips", PING_ROUNDS);
        ctx.detail("message_bytes", PING_LEN);
        if side == Side::Client {
            ctx.detail("round_trips_per_s", per_s(PING_ROUNDS, total));
            ctx.detail(
                "rtt_avg_us",
                format!("{:.1}", total.as_secs_f64() * 1e6 / PING_ROUNDS as f64),
            );
            ctx.detail("rtt_min_us", format!("{:.1}", rtt_min.as_secs_f64() * 1e6));
            ctx.detail("rtt_max_us", format!("{:.1}", rtt_max.as_secs_f64() * 1e6));
        }
        Ok(())
    })
}
