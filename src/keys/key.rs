//! One access key: how it is generated, its public id, and the digests kt
//! stores instead of it.
//!
//! A key is `kt_` + 40 characters from `[A-Za-z0-9]` (≈238 random bits),
//! drawn from the thread-local CSPRNG. Nothing of the key itself is stored or
//! shown again after `kt keys create` prints it; the record keeps:
//!
//! - `lookup`: the first 16 bytes of `SHA-256("kt-key-lookup\0" || key)`, an
//!   index so the gateway finds a key's record with one hash-map probe
//!   instead of trying every record's salt. It is not secret: at 238 bits of
//!   key entropy, neither brute force nor precomputed tables can get from
//!   the tag back to a key, so a salt would add nothing to it.
//! - `salt` (16 random bytes) and `hash = SHA-256(salt || key)`: the verifier
//!   the presented key is checked against, compared in constant time.
//!
//! A fast hash (rather than a password hash such as Argon2) is the accepted
//! practice for machine-generated high-entropy tokens (GitHub, Stripe): the
//! search space, not the hash cost, is what stops guessing, and checking a
//! key costs well under a microsecond on the request path.
//!
//! The public id (`key_` + 12 hex digits) is random and independent of the
//! key, so listing or revoking by id reveals nothing about any key.

use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every access key starts with this.
pub const KEY_PREFIX: &str = "kt_";
/// Random base62 characters after the prefix.
pub const KEY_CHARS: usize = 40;
/// Every key id starts with this.
pub const ID_PREFIX: &str = "key_";

/// Length of the lookup tag, in bytes.
pub const LOOKUP_LEN: usize = 16;
/// Length of a salt, in bytes.
pub const SALT_LEN: usize = 16;

/// Domain separation, so the lookup tag is never equal to any other SHA-256
/// of the key that some other system might compute.
const LOOKUP_DOMAIN: &[u8] = b"kt-key-lookup\0";

/// A fresh access key (`kt_` + 40 base62 characters).
pub fn generate() -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_CHARS);
    key.push_str(KEY_PREFIX);
    // `Alphanumeric` samples [A-Za-z0-9] uniformly (rejection sampling), and
    // `rand::rng()` is a CSPRNG reseeded from the OS.
    Alphanumeric.append_string(&mut rand::rng(), &mut key, KEY_CHARS);
    key
}

/// A fresh public key id: `key_` + 12 hex digits (48 random bits; ids only
/// need to be unique within one key file, which `create` checks).
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    format!("{ID_PREFIX}{}", hex::encode(b))
}

/// A fresh random salt.
pub fn new_salt() -> [u8; SALT_LEN] {
    let mut s = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut s);
    s
}

/// Whether `s` has the shape of an access key. Checked before hashing so
/// that junk (or another system's credential) is turned away cheaply.
pub fn is_well_formed(s: &str) -> bool {
    s.len() == KEY_PREFIX.len() + KEY_CHARS
        && s.starts_with(KEY_PREFIX)
        && s.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

/// The non-secret index of a key's record.
pub fn lookup_tag(key: &str) -> [u8; LOOKUP_LEN] {
    let mut h = Sha256::new();
    h.update(LOOKUP_DOMAIN);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut tag = [0u8; LOOKUP_LEN];
    tag.copy_from_slice(&digest[..LOOKUP_LEN]);
    tag
}

/// `SHA-256(salt || key)`, the stored verifier.
pub fn salted_hash(salt: &[u8], key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    out
}

/// Whether `key` matches the stored `salt` and `hash`, in time independent
/// of where the digests differ.
pub fn verify(salt: &[u8], hash: &[u8; 32], key: &str) -> bool {
    bool::from(salted_hash(salt, key).ct_eq(hash))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_contract_shape_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 43);
        assert!(a.starts_with("kt_"));
        assert!(is_well_formed(&a) && is_well_formed(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_keys_are_recognised() {
        let good = generate();
        assert!(!is_well_formed(&good[..42]));
        assert!(!is_well_formed(&format!("{good}x")));
        assert!(!is_well_formed(&good.replacen("kt_", "sk_", 1)));
        assert!(!is_well_formed(&format!("kt_{}-", &good[3..42])));
        assert!(!is_well_formed(""));
    }

    #[test]
    fn ids_are_random_and_reveal_nothing_of_the_key() {
        let id = new_id();
        assert!(id.starts_with("key_") && id.len() == 16, "{id}");
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_id(), id);
    }

    #[test]
    fn verify_accepts_the_key_and_nothing_else() {
        let key = generate();
        let salt = new_salt();
        let hash = salted_hash(&salt, &key);
        assert!(verify(&salt, &hash, &key));
        assert!(!verify(&salt, &hash, &generate()));
        assert!(!verify(&new_salt(), &hash, &key), "the salt counts");
        // The lookup tag is stable and not a prefix of the verifier.
        assert_eq!(lookup_tag(&key), lookup_tag(&key));
        assert_ne!(&hash[..LOOKUP_LEN], &lookup_tag(&key));
    }

    #[test]
    fn base62_alphabet_is_used_throughout() {
        // Over many keys every class of character shows up, so the key
        // really is drawn from all 62 symbols.
        let all: String = (0..50).map(|_| generate()[3..].to_string()).collect();
        assert!(all.bytes().any(|b| b.is_ascii_lowercase()));
        assert!(all.bytes().any(|b| b.is_ascii_uppercase()));
        assert!(all.bytes().any(|b| b.is_ascii_digit()));
    }
}
