//! Mutual authentication from a shared cluster secret: HMAC-SHA256 challenge-response.
//!
//! Each side proves it holds the secret by MACing both nonces, the cluster id and its role
//! (distinct role labels stop a reflection attack where a node's own proof is played back to it).
//! Verification is constant-time (`hmac::Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

pub use crate::secret::{MIN_SECRET_BITS, MIN_SECRET_BYTES};

/// The shared cluster secret. Its `Debug` output never shows the bytes.
#[derive(Clone)]
pub struct ClusterSecret {
    bytes: Vec<u8>,
    insecure: bool,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.insecure {
            f.write_str("ClusterSecret(insecure)")
        } else {
            write!(f, "ClusterSecret({} bytes, redacted)", self.bytes.len())
        }
    }
}

/// A secret was refused.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Too short to be a secret.
    #[error(
        "cluster secret is {len} bytes; at least {MIN_SECRET_BYTES} are required \
         (`peercm secret generate --out FILE` writes a good one)"
    )]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Long enough but too predictable (repeated characters, a small alphabet, a pattern).
    #[error(
        "cluster secret is too weak: about {bits:.0} bits estimated, at least {MIN_SECRET_BITS} \
         required (`peercm secret generate --out FILE` writes a good one)"
    )]
    TooWeak {
        /// The estimated strength in bits.
        bits: f64,
    },
}

impl ClusterSecret {
    /// A real secret (surrounding whitespace is ignored, so a file with a trailing newline works).
    pub fn new(bytes: &[u8]) -> Result<Self, SecretError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { len: trimmed.len() });
        }
        let bits = crate::secret::estimated_bits(trimmed);
        if bits < MIN_SECRET_BITS {
            return Err(SecretError::TooWeak { bits });
        }
        Ok(ClusterSecret {
            bytes: trimmed.to_vec(),
            insecure: false,
        })
    }

    /// No secret: proofs are still exchanged (with an empty key) but prove nothing. Only for
    /// `--insecure` test setups; both sides must be insecure to talk.
    pub fn insecure() -> Self {
        ClusterSecret {
            bytes: Vec::new(),
            insecure: true,
        }
    }

    /// Whether this is the insecure placeholder.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }
}

/// Which side of the handshake produced a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that opened the connection.
    Dialer,
    /// The side that accepted it.
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"peercm v2 dialer proof",
            Role::Acceptor => b"peercm v2 acceptor proof",
        }
    }
}

fn mac(
    secret: &ClusterSecret,
    role: Role,
    cluster_id: &str,
    dialer_nonce: &[u8; 32],
    acceptor_nonce: &[u8; 32],
) -> HmacSha256 {
    // HMAC accepts keys of any length, including empty.
    let mut m = match HmacSha256::new_from_slice(&secret.bytes) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    m.update(role.label());
    m.update(&(cluster_id.len() as u32).to_be_bytes());
    m.update(cluster_id.as_bytes());
    m.update(dialer_nonce);
    m.update(acceptor_nonce);
    m
}

#[cold]
fn unreachable_hmac() -> ! {
    // hmac's new_from_slice only fails for fixed-key-size MACs; HMAC is variable-size.
    panic!("HMAC-SHA256 rejected a key; this cannot happen")
}

/// Computes a proof.
pub fn proof(
    secret: &ClusterSecret,
    role: Role,
    cluster_id: &str,
    dialer_nonce: &[u8; 32],
    acceptor_nonce: &[u8; 32],
) -> [u8; 32] {
    mac(secret, role, cluster_id, dialer_nonce, acceptor_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Verifies a proof in constant time.
pub fn verify(
    secret: &ClusterSecret,
    role: Role,
    cluster_id: &str,
    dialer_nonce: &[u8; 32],
    acceptor_nonce: &[u8; 32],
    candidate: &[u8; 32],
) -> bool {
    mac(secret, role, cluster_id, dialer_nonce, acceptor_nonce)
        .verify_slice(candidate)
        .is_ok()
}

/// Strong test secrets (64 hex characters of random bytes).
#[cfg(test)]
pub(crate) const S1: &str = "4f1c9a2be07d3358a6c1f0e29d4b7a86c5e3f1029ab8d7c6e5f4a3b2c1d0e9f8";
#[cfg(test)]
pub(crate) const S2: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29180f7e6d5c4b3a2918f0e1d2c3b4";

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn proofs_verify_only_with_same_secret_role_and_nonces() {
        let s = secret(S1);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let p = proof(&s, Role::Dialer, "c", &a, &b);
        assert!(verify(&s, Role::Dialer, "c", &a, &b, &p));
        assert!(
            !verify(&s, Role::Acceptor, "c", &a, &b, &p),
            "role binds the proof"
        );
        assert!(
            !verify(&s, Role::Dialer, "d", &a, &b, &p),
            "cluster binds the proof"
        );
        assert!(
            !verify(&s, Role::Dialer, "c", &b, &a, &p),
            "nonces bind the proof"
        );
        assert!(!verify(&secret(S2), Role::Dialer, "c", &a, &b, &p));
        assert!(!verify(
            &ClusterSecret::insecure(),
            Role::Dialer,
            "c",
            &a,
            &b,
            &p
        ));
    }

    #[test]
    fn short_secret_refused_and_debug_redacts() {
        assert!(matches!(
            ClusterSecret::new(b"short\n"),
            Err(SecretError::TooShort { len: 5 })
        ));
        let s = secret(&format!("{S1}\n"));
        assert!(!format!("{s:?}").contains("4f1c"));
    }

    #[test]
    fn weak_secrets_refused_with_advice() {
        // The outside test's secret: 16 bytes of one repeated character.
        let err = ClusterSecret::new(&[b'x'; 16]).unwrap_err();
        assert!(matches!(err, SecretError::TooShort { len: 16 }));
        for weak in [
            "x".repeat(40),
            "password".repeat(5),
            "0123456789abcdef".repeat(3),
        ] {
            let err = ClusterSecret::new(weak.as_bytes()).unwrap_err();
            assert!(matches!(err, SecretError::TooWeak { .. }), "{weak}: {err}");
            assert!(err.to_string().contains("peercm secret generate"), "{err}");
        }
    }
}
