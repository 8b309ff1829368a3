//! The leader's clients across scenarios: their handles (a stream takes one and gives it
//! back), the record numbering that continues from scenario to scenario, and each client's
//! stream settings (window, pace, record size).

use super::super::clients::{tag_of, CONFIG, HEARTBEAT, MIRROR};
use super::super::stream::{run_stream, Stream, StreamCfg, StreamOut};
use super::Leader;
use peercm_cm_manager::ClientHandle;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

impl Leader {
    pub fn put_handle(&mut self, name: &'static str, h: ClientHandle) {
        self.handles.insert(name, h);
    }

    /// Takes a client's handle (give it back with `put_handle`).
    pub fn take(&mut self, name: &'static str) -> Result<ClientHandle, String> {
        self.handles.remove(name).ok_or_else(|| {
            format!("client {name} was lost in an earlier scenario (its handle is gone)")
        })
    }

    /// The client's handle, while no stream holds it.
    pub fn handle_mut(&mut self, name: &str) -> Option<&mut ClientHandle> {
        self.handles.get_mut(name)
    }

    /// Records sent so far by a client.
    pub fn sent_of(&self, name: &str) -> u64 {
        self.sent.get(name).copied().unwrap_or(0)
    }

    fn stream_cfg(&self, name: &'static str, count: Option<u64>) -> StreamCfg {
        StreamCfg {
            name,
            tag: tag_of(name),
            sync: name == MIRROR,
            first: self.sent.get(name).copied().unwrap_or(0) + 1,
            count,
            // Across a partner switch the async clients keep sending at their pace (sends must
            // be accepted while messages are held for the new partner), so their windows then
            // cover seconds of it.
            window: match name {
                MIRROR => self.args.window,
                _ if self.keep_sending => 4096,
                _ => 32,
            },
            pace: match name {
                CONFIG => Some(Duration::from_millis(2)),
                HEARTBEAT => Some(Duration::from_millis(20)),
                _ => None,
            },
            bytes: if name == HEARTBEAT {
                64
            } else {
                self.args.record_bytes
            },
        }
    }

    /// Starts streams for the given clients; `count` per client (None = until stopped).
    pub fn start_streams(
        &mut self,
        which: &[(&'static str, Option<u64>)],
        stop: &Arc<AtomicBool>,
    ) -> Result<Vec<Stream>, String> {
        let mut v = Vec::new();
        for (name, count) in which {
            let h = self.take(name)?;
            let cfg = self.stream_cfg(name, *count);
            let progress = Arc::new(AtomicU64::new(0));
            v.push((
                *name,
                tokio::spawn(run_stream(h, cfg, stop.clone(), progress.clone())),
                progress,
            ));
        }
        Ok(v)
    }

    /// Waits for the streams; takes their handles back and counts what they sent.
    pub async fn join_streams(
        &mut self,
        streams: Vec<Stream>,
    ) -> Result<BTreeMap<&'static str, StreamOut>, String> {
        let mut out = BTreeMap::new();
        let mut err = None;
        for (name, task, _) in streams {
            match task.await {
                Ok((h, o)) => {
                    *self.sent.entry(name).or_insert(0) = o.last_sent.max(self.sent_of(name));
                    self.handles.insert(name, h);
                    out.insert(name, o);
                }
                Err(e) => {
                    err.get_or_insert(format!("stream {name} panicked or was cancelled: {e}"));
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Waits for the mirror (the first stream), then stops and joins the others.
    pub async fn join_streams_after_mirror(
        &mut self,
        mut streams: Vec<Stream>,
        stop: &Arc<AtomicBool>,
    ) -> Result<BTreeMap<&'static str, StreamOut>, String> {
        let rest = streams.split_off(1);
        let first = self.join_streams(streams).await;
        stop.store(true, Ordering::Relaxed);
        let others = self.join_streams(rest).await;
        let mut all = first?;
        all.extend(others?);
        Ok(all)
    }
}
