//! Static publisher keys. Configured either as the key itself or as `sha256:<hex>` of it
//! (so the config file need not hold the secret); either way only the SHA-256 digest is
//! kept in memory, and a presented key is hashed and compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One configured publisher key, as its SHA-256 digest. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublishKey([u8; 32]);

impl std::fmt::Debug for PublishKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishKey(<redacted>)")
    }
}

impl PublishKey {
    /// `key` or `sha256:<64 hex digits>`.
    pub fn parse(configured: &str) -> Result<Self, &'static str> {
        if let Some(digits) = configured.strip_prefix("sha256:") {
            if digits.len() != 64 {
                return Err("a sha256: key needs 64 hex digits");
            }
            let mut out = [0u8; 32];
            hex::decode_to_slice(digits, &mut out).map_err(|_| "not hex")?;
            return Ok(Self(out));
        }
        if configured.len() < 16 {
            return Err("a publisher key must be at least 16 characters");
        }
        Ok(Self(digest(configured)))
    }

    /// Whether `presented` is this key, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.ct_eq(&digest(presented)))
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_keys_match_the_same_secret() {
        let plain = PublishKey::parse("a-long-publisher-secret").unwrap();
        let hashed = PublishKey::parse(
            "sha256:0c0f6a5b6c5bd6bb1c1cf2c2f1b46d53d4d6b0df2d6c2c3a0bc8bcd1d0a3e5f1",
        )
        .unwrap();
        assert!(plain.matches("a-long-publisher-secret"));
        assert!(!plain.matches("a-long-publisher-secreT"));
        assert!(!hashed.matches("a-long-publisher-secret"));
        let h = hex::encode(digest("a-long-publisher-secret"));
        let hashed = PublishKey::parse(&format!("sha256:{h}")).unwrap();
        assert!(hashed.matches("a-long-publisher-secret"));
        assert!(PublishKey::parse("short").is_err());
        assert!(PublishKey::parse("sha256:zz").is_err());
        assert_eq!(format!("{plain:?}"), "PublishKey(<redacted>)");
    }
}
