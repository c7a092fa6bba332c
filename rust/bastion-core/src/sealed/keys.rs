//! Key material: the per-artifact DEK, the local `file` key-encryption key, HKDF sub-keys and the
//! key commitment. Key types wrap `Zeroizing`, implement neither `Debug` nor `Clone`, and no
//! function returns key bytes.

use std::io::{Read, Write};
use std::path::Path;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use super::io::{open_error, open_nofollow};
use super::AeadAlg;
use crate::CoreError;

const INFO_AEAD: &[u8] = b"bastion.sealed.v1.aead";
const INFO_COMMIT: &[u8] = b"bastion.sealed.v1.commit";
const COMMIT_DOMAIN: &[u8] = b"bastion.sealed.v1.commitment\0";
const KEK_SALT: &[u8] = b"bastion.sealed.v1.kek";
const WRAP_DOMAIN: &[u8] = b"bastion.sealed.v1.wrap\0";
/// Bytes of a `file`-provider wrapped DEK: nonce ‖ ciphertext ‖ tag.
pub const WRAPPED_LEN: usize = 12 + 32 + 16;

fn random32(rng: &SystemRandom) -> Result<Zeroizing<[u8; 32]>, CoreError> {
    let mut k = Zeroizing::new([0u8; 32]);
    rng.fill(&mut k[..])
        .map_err(|_| CoreError::Crypto("system RNG"))?;
    Ok(k)
}

/// HKDF output length for `hkdf::Prk::expand`.
struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The 256-bit data-encryption key of one sealed artifact.
pub struct Dek(Zeroizing<[u8; 32]>);

impl Dek {
    /// A fresh random DEK.
    pub fn generate(rng: &SystemRandom) -> Result<Dek, CoreError> {
        Ok(Dek(random32(rng)?))
    }

    /// A DEK from exactly 32 bytes (a KMS or HSM unwrap); the caller wipes its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Dek, CoreError> {
        if bytes.len() != 32 {
            return Err(CoreError::Crypto("unwrapped data key is not 32 bytes"));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(bytes);
        Ok(Dek(k))
    }

    /// Lends the key bytes to `f` (to hand them to a KMS or HSM for wrapping); nothing returns them.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.0[..])
    }

    fn prk(&self, salt: &[u8; 32]) -> hkdf::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.0[..])
    }

    /// Per-file AEAD key: HKDF-SHA256(DEK, salt, "bastion.sealed.v1.aead" ‖ u32be file).
    pub fn file_key(
        &self,
        alg: AeadAlg,
        salt: &[u8; 32],
        file: u32,
    ) -> Result<LessSafeKey, CoreError> {
        let algo = alg.ring();
        let idx = file.to_be_bytes();
        let info = [INFO_AEAD, &idx[..]];
        let prk = self.prk(salt);
        let okm = prk
            .expand(&info, algo)
            .map_err(|_| CoreError::Crypto("HKDF expand"))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    fn commit_key(&self, salt: &[u8; 32]) -> Result<hmac::Key, CoreError> {
        let info = [INFO_COMMIT];
        let prk = self.prk(salt);
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .map_err(|_| CoreError::Crypto("HKDF expand"))?;
        Ok(hmac::Key::from(okm))
    }

    /// Key commitment: HMAC-SHA256(HKDF(DEK, salt, "…commit"), domain ‖ header digest).
    pub fn commitment(
        &self,
        salt: &[u8; 32],
        header_digest: &[u8; 32],
    ) -> Result<[u8; 32], CoreError> {
        let key = self.commit_key(salt)?;
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(COMMIT_DOMAIN);
        ctx.update(header_digest);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        Ok(out)
    }

    /// Constant-time check of a commitment.
    pub fn check_commitment(
        &self,
        salt: &[u8; 32],
        hd: &[u8; 32],
        commitment: &[u8],
    ) -> Result<bool, CoreError> {
        let key = self.commit_key(salt)?;
        let msg = [COMMIT_DOMAIN, &hd[..]].concat();
        Ok(hmac::verify(&key, &msg, commitment).is_ok())
    }
}

/// A key-encryption key that wraps and unwraps data keys: the local [`KeyEncryptionKey`] (`file`),
/// or a key that lives in a KMS or HSM (implemented outside the core, e.g. by the Python bindings).
pub trait KeyWrapper: Send + Sync {
    /// The `key.provider` value written into headers, and the only one this wrapper opens.
    fn provider(&self) -> String;
    /// A public identifier of the key-encryption key (never key material).
    fn key_id(&self) -> Result<String, CoreError>;
    /// Wrap `dek`; `aad` (the canonical key block without the wrapped key) must be authenticated.
    fn wrap_dek(&self, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, CoreError>;
    /// Unwrap; `Ok(None)` when the key is wrong or the wrapped key or `aad` was altered.
    fn unwrap_wrapped(&self, wrapped: &[u8], aad: &[u8]) -> Result<Option<Dek>, CoreError>;
}

impl KeyWrapper for KeyEncryptionKey {
    fn provider(&self) -> String {
        "file".into()
    }
    fn key_id(&self) -> Result<String, CoreError> {
        KeyEncryptionKey::key_id(self)
    }
    fn wrap_dek(&self, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, CoreError> {
        self.wrap(dek, aad, &SystemRandom::new())
    }
    fn unwrap_wrapped(&self, wrapped: &[u8], aad: &[u8]) -> Result<Option<Dek>, CoreError> {
        self.unwrap_dek(wrapped, aad)
    }
}

/// A local key-encryption key (`file` provider): 32 raw bytes in a 0600/0400 file.
pub struct KeyEncryptionKey(Zeroizing<[u8; 32]>);

impl KeyEncryptionKey {
    /// Read a KEK file. Refuses symlinks, non-regular files, modes other than 0600/0400 and any
    /// length other than 32 bytes.
    pub fn from_file(path: &Path) -> Result<KeyEncryptionKey, CoreError> {
        let bad = |reason: String| CoreError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut f = open_nofollow(path).map_err(|e| open_error(path, e))?;
        let meta = f.metadata().map_err(|e| CoreError::io(path, e))?;
        if !meta.file_type().is_file() {
            return Err(bad("not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode != 0o600 && mode != 0o400 {
                return Err(bad(format!("mode {mode:04o}; must be 0600 or 0400")));
            }
        }
        if meta.len() != 32 {
            return Err(bad("must hold exactly 32 bytes".into()));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        f.read_exact(&mut k[..])
            .map_err(|e| CoreError::io(path, e))?;
        let mut extra = [0u8; 1];
        if f.read(&mut extra).map_err(|e| CoreError::io(path, e))? != 0 {
            return Err(bad("must hold exactly 32 bytes".into()));
        }
        Ok(KeyEncryptionKey(k))
    }

    /// Create a new KEK file with mode 0600 (refuses to overwrite anything).
    pub fn create_file(path: &Path) -> Result<(), CoreError> {
        let k = random32(&SystemRandom::new())?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let mut f = opts.open(path).map_err(|e| open_error(path, e))?;
        f.write_all(&k[..]).map_err(|e| CoreError::io(path, e))?;
        f.sync_all().map_err(|e| CoreError::io(path, e))
    }

    fn prk(&self) -> hkdf::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, KEK_SALT).extract(&self.0[..])
    }

    fn wrap_key(&self) -> Result<LessSafeKey, CoreError> {
        let info = [&b"wrap"[..]];
        let prk = self.prk();
        let okm = prk
            .expand(&info, &aead::AES_256_GCM)
            .map_err(|_| CoreError::Crypto("HKDF expand"))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// A public fingerprint of the KEK (HKDF output, not the key): `kek:<32 hex>`.
    pub fn key_id(&self) -> Result<String, CoreError> {
        let info = [&b"key-id"[..]];
        let mut id = [0u8; 16];
        self.prk()
            .expand(&info, Len(16))
            .and_then(|okm| okm.fill(&mut id))
            .map_err(|_| CoreError::Crypto("HKDF expand"))?;
        Ok(format!(
            "kek:{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }

    /// Wrap `dek` with AES-256-GCM under the KEK's wrap sub-key, random nonce, AAD = domain ‖ `aad`.
    pub fn wrap(&self, dek: &Dek, aad: &[u8], rng: &SystemRandom) -> Result<Vec<u8>, CoreError> {
        let mut nonce = [0u8; 12];
        rng.fill(&mut nonce)
            .map_err(|_| CoreError::Crypto("system RNG"))?;
        let mut buf = Zeroizing::new(dek.0.to_vec());
        let a = [WRAP_DOMAIN, aad].concat();
        let tag = self
            .wrap_key()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(a),
                &mut buf[..],
            )
            .map_err(|_| CoreError::Crypto("DEK wrap"))?;
        Ok([&nonce[..], &buf[..], tag.as_ref()].concat())
    }

    /// Unwrap a DEK; `None` when the KEK is wrong or the wrapped DEK or its context was altered.
    pub fn unwrap_dek(&self, wrapped: &[u8], aad: &[u8]) -> Result<Option<Dek>, CoreError> {
        if wrapped.len() != WRAPPED_LEN {
            return Ok(None);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&wrapped[..12]);
        let mut buf = Zeroizing::new(wrapped[12..].to_vec());
        let a = [WRAP_DOMAIN, aad].concat();
        let key = self.wrap_key()?;
        let Ok(pt) = key.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(a),
            &mut buf[..],
        ) else {
            return Ok(None);
        };
        let mut dek = Zeroizing::new([0u8; 32]);
        dek.copy_from_slice(pt);
        Ok(Some(Dek(dek)))
    }
}
