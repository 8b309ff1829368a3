//! The kernel's QP state-transition table (`qp_state_table` in the kernel's ib core), encoded
//! once and shared by both backends: the simulator enforces it, and the real backend checks it
//! before calling `ibv_modify_qp`, so a bad transition is an
//! [`VerbsError::InvalidTransition`] naming both states instead of a bare `EINVAL`.

use crate::error::VerbsError;
use crate::types::QpState;

/// Whether `from -> to` is a legal `ibv_modify_qp` transition for an RC QP.
pub fn allowed(from: QpState, to: QpState) -> bool {
    use QpState::*;
    match (from, to) {
        // Any state may go to RESET or ERR.
        (_, Reset) | (_, Err) => true,
        (Reset, Init) => true,
        (Init, Init) | (Init, Rtr) => true,
        (Rtr, Rts) => true,
        (Rts, Rts) | (Rts, Sqd) => true,
        (Sqd, Rts) | (Sqd, Sqd) => true,
        (Sqe, Rts) => true,
        _ => false,
    }
}

/// [`allowed`] as a `Result`.
pub fn check(from: QpState, to: QpState) -> Result<(), VerbsError> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(VerbsError::InvalidTransition { from, to })
    }
}

/// Whether a QP in `state` accepts posted receives (`ibv_post_recv`).
pub fn accepts_recv(state: QpState) -> bool {
    !matches!(state, QpState::Reset)
}

/// Whether a QP in `state` accepts posted sends (`ibv_post_send`).
pub fn accepts_send(state: QpState) -> bool {
    matches!(state, QpState::Rts | QpState::Sqd | QpState::Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use QpState::*;

    #[test]
    fn the_connect_path_is_allowed_and_skipping_is_not() {
        assert!(allowed(Reset, Init) && allowed(Init, Rtr) && allowed(Rtr, Rts));
        assert!(!allowed(Reset, Rtr));
        assert!(!allowed(Init, Rts));
        assert!(!allowed(Reset, Rts));
        assert!(!allowed(Err, Rts), "an errored QP must be reset first");
        assert!(allowed(Err, Reset) && allowed(Rts, Err));
        assert_eq!(
            check(Init, Rts),
            Result::Err(VerbsError::InvalidTransition {
                from: Init,
                to: Rts
            })
        );
    }
}
