//! Rekeying (rewrap the DEK under a new KEK; ciphertext untouched) and `inspect`.

use std::path::Path;

use serde_json::Value;

use super::container::CTXH_NAME;
use super::header::b64e;
use super::keys::{KeyEncryptionKey, KeyWrapper};
use super::reader::{unlock, wrap_aad, SealedDir};
use super::writer::write_ctxh;
use crate::digest::to_hex;
use crate::CoreError;

/// Rewrap the DEK of the sealed directory `dir` from the KEK at `old_kek` to the one at
/// `new_kek`. Only `weights.ctxh` is rewritten (temporary file + rename), and in it only the key
/// block (`key_id`, `wrapped_dek`). The header digest — and so every segment's AAD, the tags,
/// the hash table and the key commitment — is unchanged, because the digest excludes the key
/// block. The old KEK must unwrap the DEK and the commitment must verify first.
pub fn rekey(dir: &Path, old_kek: &Path, new_kek: &Path) -> Result<(), CoreError> {
    let old = KeyEncryptionKey::from_file(old_kek)?;
    let new = KeyEncryptionKey::from_file(new_kek)?;
    rekey_with(dir, &old, &new)
}

/// [`rekey`] between any two key-encryption keys, including across providers (a local file to a
/// KMS or an HSM): the old one must unwrap, then the key block names the new provider and key.
pub fn rekey_with(dir: &Path, old: &dyn KeyWrapper, new: &dyn KeyWrapper) -> Result<(), CoreError> {
    let d = SealedDir::open(dir)?;
    let dek = unlock(&d, old)?;
    let mut c = d.c.clone();
    let ctxh = dir.join(CTXH_NAME);
    let fmt = |reason: String| CoreError::Format {
        path: ctxh.clone(),
        segment: None,
        reason,
    };
    c.header.key.provider = new.provider();
    c.header.key.key_id = new.key_id()?;
    let aad = wrap_aad(&c.header.key).map_err(fmt)?;
    c.header.key.wrapped_dek = b64e(&new.wrap_dek(&dek, &aad)?);
    // Defence in depth: the digest must not have moved.
    if c.header.digest().map_err(fmt)? != d.digest {
        return Err(CoreError::Crypto("header digest changed during rekey"));
    }
    c.header.validate().map_err(fmt)?;
    drop(d);
    write_ctxh(dir, &c)
}

/// The header of `dir` as JSON text without secrets (`key.wrapped_dek` removed), plus
/// `header_digest` (hex) and `total_segments`. Validates the header; opens no data files.
pub fn inspect(dir: &Path) -> Result<String, CoreError> {
    let c = super::container::read_container(dir)?;
    let ctxh = dir.join(CTXH_NAME);
    let fmt = |reason: String| CoreError::Format {
        path: ctxh.clone(),
        segment: None,
        reason,
    };
    let digest = c.header.digest().map_err(fmt)?;
    let mut v = serde_json::to_value(&c.header).map_err(|e| fmt(e.to_string()))?;
    if let Value::Object(m) = &mut v {
        if let Some(Value::Object(k)) = m.get_mut("key") {
            k.remove("wrapped_dek");
        }
        m.insert("header_digest".into(), Value::String(to_hex(&digest)));
        m.insert(
            "total_segments".into(),
            Value::from(c.header.total_segments()),
        );
    }
    serde_json::to_string(&v).map_err(|e| fmt(e.to_string()))
}
