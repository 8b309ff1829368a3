//! How strong a cluster secret is: a conservative estimate of its entropy in bits.
//!
//! A secret must be at least [`MIN_SECRET_BYTES`] long and estimated at [`MIN_SECRET_BITS`] or
//! more. The estimate is deliberately pessimistic: it takes the smaller of
//! - the length times log2 of the alphabet its character classes span, and
//! - the length times the empirical (Shannon) entropy per byte,
//!
//! computed over the shortest period of the secret (so `"abcd"` repeated counts once). A string
//! of one repeated character, a short word repeated, or a small alphabet fails; 32 random bytes
//! written as hex or base64 (what `peercm secret generate` writes) pass with a wide margin.

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// Least estimated strength accepted, in bits.
pub const MIN_SECRET_BITS: f64 = 128.0;
/// How many random bytes `peercm secret generate` draws (written as hex: 64 characters).
pub const GENERATED_SECRET_BYTES: usize = 32;

/// The estimated strength of `secret` in bits (see the module documentation).
pub fn estimated_bits(secret: &[u8]) -> f64 {
    let core = &secret[..period(secret)];
    if core.is_empty() {
        return 0.0;
    }
    let pool_bits = (pool_size(core) as f64).log2() * core.len() as f64;
    let shannon_bits = shannon_per_byte(core) * core.len() as f64;
    pool_bits.min(shannon_bits)
}

/// The length of the shortest prefix whose repetition makes up `s` (the whole length when none).
fn period(s: &[u8]) -> usize {
    (1..=s.len() / 2)
        .find(|&p| s.len().is_multiple_of(p) && s.chunks(p).all(|c| c == &s[..p]))
        .unwrap_or(s.len())
}

/// Size of the alphabet spanned by the character classes present.
fn pool_size(s: &[u8]) -> u32 {
    let has = |f: fn(&u8) -> bool| s.iter().any(f);
    let mut pool = 0;
    if has(u8::is_ascii_lowercase) {
        pool += 26;
    }
    if has(u8::is_ascii_uppercase) {
        pool += 26;
    }
    if has(u8::is_ascii_digit) {
        pool += 10;
    }
    if has(|b| b.is_ascii_punctuation() || *b == b' ') {
        pool += 33;
    }
    if has(|b| !b.is_ascii_alphanumeric() && !b.is_ascii_punctuation() && *b != b' ') {
        pool += 128;
    }
    pool.max(1)
}

fn shannon_per_byte(s: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_forms_score_low() {
        assert_eq!(estimated_bits(&[b'a'; 64]), 0.0);
        assert!(estimated_bits("abcd".repeat(16).as_bytes()) < 16.0);
        assert!(estimated_bits("0123456789abcdef".repeat(4).as_bytes()) <= 64.0);
        assert!(estimated_bits(b"passwordpasswordpassword12345678") < MIN_SECRET_BITS);
    }

    #[test]
    fn random_hex_and_base64_pass() {
        let hex = "4f1c9a2be07d3358a6c1f0e29d4b7a86c5e3f1029ab8d7c6e5f4a3b2c1d0e9f8";
        assert!(estimated_bits(hex.as_bytes()) >= MIN_SECRET_BITS);
        let b64 = "q3J0mZ8xT1vW4nY7bK2cL5pR9sU6hG0eF3dA8zXwQiE=";
        assert!(estimated_bits(b64.as_bytes()) >= MIN_SECRET_BITS);
    }
}
