//! OCI content digests: `algorithm:encoded`, sha256 and sha512.

use std::fmt;

use axum::http::StatusCode;
use sha2::{Digest as _, Sha256, Sha512};

use crate::error::AppError;
use crate::storage::Digest;

/// A digest algorithm the registry verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// sha256, 64 hex digits.
    Sha256,
    /// sha512, 128 hex digits.
    Sha512,
}

/// A parsed OCI digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciDigest {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Lower-case hex.
    pub hex: String,
}

impl OciDigest {
    /// Parses `sha256:<64 hex>` or `sha512:<128 hex>` (lower-case, as the
    /// spec requires).
    pub fn parse(text: &str) -> Option<OciDigest> {
        let (algorithm, hex) = text.split_once(':')?;
        let (algorithm, len) = match algorithm {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            _ => return None,
        };
        let ok = hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| OciDigest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// Parses a digest a client sent, or answers 400 `DIGEST_INVALID`.
    pub fn from_client(text: &str) -> Result<OciDigest, AppError> {
        OciDigest::parse(text).ok_or_else(|| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("{text:?} is not a sha256 or sha512 digest"),
            )
        })
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> OciDigest {
        OciDigest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// This digest's algorithm applied to `data`.
    pub fn same_kind_of(&self, data: &[u8]) -> OciDigest {
        let hex = match self.algorithm {
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
            Algorithm::Sha512 => hex::encode(Sha512::digest(data)),
        };
        OciDigest {
            algorithm: self.algorithm,
            hex,
        }
    }

    /// The storage digest when this is a sha256 one.
    pub fn as_storage(&self) -> Option<Digest> {
        match self.algorithm {
            Algorithm::Sha256 => Digest::parse(&self.hex),
            Algorithm::Sha512 => None,
        }
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match self.algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        write!(f, "{algorithm}:{}", self.hex)
    }
}

/// A sha512 computed alongside the store's sha256 while bytes stream by.
pub struct ExtraHash(Option<Sha512>);

impl ExtraHash {
    /// Hashes with sha512 only when `wanted` is a sha512 digest.
    pub fn for_digest(wanted: &OciDigest) -> ExtraHash {
        ExtraHash((wanted.algorithm == Algorithm::Sha512).then(Sha512::new))
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        if let Some(hasher) = &mut self.0 {
            hasher.update(data);
        }
    }

    /// The digest of everything fed, given the store's sha256 of it.
    pub fn finish(self, sha256: &Digest) -> OciDigest {
        match self.0 {
            Some(hasher) => OciDigest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(hasher.finalize()),
            },
            None => OciDigest {
                algorithm: Algorithm::Sha256,
                hex: sha256.hex(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let sha256 = format!("sha256:{}", "a".repeat(64));
        assert_eq!(OciDigest::parse(&sha256).unwrap().to_string(), sha256);
        let sha512 = format!("sha512:{}", "0".repeat(128));
        assert_eq!(
            OciDigest::parse(&sha512).unwrap().algorithm,
            Algorithm::Sha512
        );
        assert!(OciDigest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(OciDigest::parse(&format!("sha256:{}", "a".repeat(63))).is_none());
        assert!(OciDigest::parse(&format!("md5:{}", "a".repeat(32))).is_none());
        assert!(OciDigest::parse("latest").is_none());
    }

    #[test]
    fn extra_hash() {
        let wanted = OciDigest::sha256_of(b"x");
        let extra = ExtraHash::for_digest(&wanted);
        assert_eq!(extra.finish(&Digest::of(b"x")), wanted);
        let wanted512 = OciDigest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        let mut extra = ExtraHash::for_digest(&wanted512);
        extra.update(b"x");
        assert_eq!(
            extra.finish(&Digest::of(b"x")),
            wanted512.same_kind_of(b"x")
        );
    }
}
