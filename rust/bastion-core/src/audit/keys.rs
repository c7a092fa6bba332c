//! Audit keys: the Ed25519 checkpoint signing key (PKCS#8 file, 0600/0400), its public key (a text
//! file `ed25519:<64 hex>`), and the content-HMAC key (32 raw bytes, 0600/0400). Secret key types
//! implement neither `Debug` nor `Clone`, and no function returns secret bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use super::hash::{from_hex, hex};
use super::limits::MAX_KEY_FILE;
use crate::CoreError;

const KEY_ID_CONTEXT: &str = "bastion.audit.v1 2025 key id";
const PUBLIC_PREFIX: &str = "ed25519:";

fn key_err(path: &Path, reason: impl Into<String>) -> CoreError {
    CoreError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn open_read(path: &Path) -> Result<File, CoreError> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    o.open(path).map_err(|e| open_error(path, e))
}

pub(crate) fn open_error(path: &Path, e: io::Error) -> CoreError {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return CoreError::Symlink {
            path: path.to_path_buf(),
        };
    }
    CoreError::io(path, e)
}

/// Read a whole small file; `secret` files must be mode 0600 or 0400.
fn read_small(path: &Path, secret: bool) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let f = open_read(path)?;
    let meta = f.metadata().map_err(|e| CoreError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(key_err(path, "not a regular file"));
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode != 0o600 && mode != 0o400 {
            return Err(key_err(
                path,
                format!("mode {mode:04o}; must be 0600 or 0400"),
            ));
        }
    }
    let _ = secret;
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CoreError::io(path, e))?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(key_err(path, format!("larger than {MAX_KEY_FILE} bytes")));
    }
    Ok(buf)
}

/// Create `path` with mode `mode` (refusing to overwrite anything or follow a link) and sync it.
fn create_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CoreError> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode).custom_flags(libc::O_NOFOLLOW);
    }
    let _ = mode;
    let mut f = o.open(path).map_err(|e| open_error(path, e))?;
    f.write_all(bytes).map_err(|e| CoreError::io(path, e))?;
    f.sync_all().map_err(|e| CoreError::io(path, e))
}

/// The server's checkpoint signing key.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// Load a PKCS#8 (v1 or v2) Ed25519 key from a 0600/0400 regular file (no symlinks).
    pub fn from_file(path: &Path) -> Result<SigningKey, CoreError> {
        let der = read_small(path, true)?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map(SigningKey)
            .map_err(|_| key_err(path, "not a PKCS#8 Ed25519 private key"))
    }

    /// A fresh random key (tests and [`keygen`]); returns the key and its PKCS#8 encoding.
    pub fn generate() -> Result<(SigningKey, Zeroizing<Vec<u8>>), CoreError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| CoreError::Crypto("Ed25519 key generation"))?;
        let der = Zeroizing::new(doc.as_ref().to_vec());
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| CoreError::Crypto("Ed25519 key generation"))?;
        Ok((SigningKey(pair), der))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }

    /// Ed25519 signature of `msg`.
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut s = [0u8; 64];
        s.copy_from_slice(self.0.sign(msg).as_ref());
        s
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parse the text form `ed25519:<64 lowercase hex>` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Option<PublicKey> {
        let hexpart = text.trim().strip_prefix(PUBLIC_PREFIX)?;
        let mut k = [0u8; 32];
        from_hex(hexpart, &mut k).then_some(PublicKey(k))
    }

    /// Read a public-key file (text form; no symlinks).
    pub fn from_file(path: &Path) -> Result<PublicKey, CoreError> {
        let bytes = read_small(path, false)?;
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(PublicKey::parse)
            .ok_or_else(|| key_err(path, "expected one line `ed25519:<64 hex digits>`"))
    }

    /// The text form, `ed25519:<64 hex>`.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", hex(&self.0))
    }

    /// A short public fingerprint, `ed25519:<32 hex>`, written into every checkpoint.
    pub fn key_id(&self) -> String {
        let d = blake3::derive_key(KEY_ID_CONTEXT, &self.0);
        format!("{PUBLIC_PREFIX}{}", hex(&d[..16]))
    }

    /// Whether `sig` is a valid signature of `msg` by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

/// HKDF salt of the per-tenant content keys.
const CONTENT_SALT: &[u8] = b"bastion.audit.v1 content key salt";
/// HKDF info prefix of a per-tenant content key; the tenant follows, length-prefixed (u64 BE).
const CONTENT_INFO: &[u8] = b"bastion audit content v1\0";

/// The key of the content HMACs (`prompt_hmac`, `completion_hmac`): HMAC-SHA256, under a key
/// derived per tenant with HKDF-SHA256, so one tenant's HMACs say nothing about another's.
pub struct ContentKey {
    key: hmac::Key,
    prk: hkdf::Prk,
}

impl ContentKey {
    /// Read a 0600/0400 file of exactly 32 bytes.
    pub fn from_file(path: &Path) -> Result<ContentKey, CoreError> {
        let bytes = read_small(path, true)?;
        if bytes.len() != 32 {
            return Err(key_err(path, "must hold exactly 32 bytes"));
        }
        Ok(ContentKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            prk: hkdf::Salt::new(hkdf::HKDF_SHA256, CONTENT_SALT).extract(&bytes),
        })
    }

    /// `hmac-sha256:<64 hex>` of `data` under the content key itself (no tenant).
    pub fn mac(&self, data: &[u8]) -> String {
        format!("hmac-sha256:{}", hex(hmac::sign(&self.key, data).as_ref()))
    }

    /// `hmac-sha256:<64 hex>` of `data` under the key of `tenant`: HKDF-SHA256-Expand of the
    /// content key with info = `"bastion audit content v1\0"` ‖ u64be(len(tenant)) ‖ tenant.
    pub fn mac_for(&self, tenant: &str, data: &[u8]) -> Result<String, CoreError> {
        let len = (tenant.len() as u64).to_be_bytes();
        let info = [CONTENT_INFO, &len[..], tenant.as_bytes()];
        let okm = self
            .prk
            .expand(&info, hmac::HMAC_SHA256)
            .map_err(|_| CoreError::Crypto("HKDF expand"))?;
        let key = hmac::Key::from(okm);
        Ok(format!(
            "hmac-sha256:{}",
            hex(hmac::sign(&key, data).as_ref())
        ))
    }
}

/// Create a signing key (PKCS#8, 0600), its public key file (0644) and a content-HMAC key (32
/// random bytes, 0600). Refuses to overwrite any of them. Returns the key id.
pub fn keygen(signing: &Path, public: &Path, content: &Path) -> Result<String, CoreError> {
    let (key, der) = SigningKey::generate()?;
    let mut hk = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut hk[..])
        .map_err(|_| CoreError::Crypto("system RNG"))?;
    let pk = key.public_key();
    create_file(signing, &der, 0o600)?;
    create_file(public, format!("{}\n", pk.to_text()).as_bytes(), 0o644)?;
    create_file(content, &hk[..], 0o600)?;
    Ok(pk.key_id())
}
