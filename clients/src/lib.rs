//! The clients peercm ships, built only on the public `peercm-cm-manager` client API.
//!
//! - [`record`]: the mirrored log record format (LSN, CRC32C, data).
//! - [`mirror`]: the NVRAM-log mirroring client: [`mirror::MirrorSender`] on the production
//!   node (a record counts as mirrored only once the partner client has stored it and said so),
//!   [`mirror::MirrorReceiver`] on the partner (stores records in order, exactly once by LSN).
//! - [`heartbeat`]: the heartbeat client: periodic beats and the partner's liveness.

pub mod heartbeat;
pub mod mirror;
pub mod record;
