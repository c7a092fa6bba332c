//! Building the header of a new sealed artifact: index, salt, DEK, wrap and commitment.

use std::collections::BTreeMap;

use ring::rand::{SecureRandom, SystemRandom};

use super::header::*;
use super::keys::{Dek, KeyWrapper};
use super::limits::FORMAT_VERSION;
use super::reader::wrap_aad;
use super::segment::n_segments;
use super::source::SourceWeights;
use super::writer::SealOptions;
use crate::digest::to_hex;
use crate::CoreError;

/// The complete header for `weights`, with a fresh salt and DEK: the header digest is computed
/// first (it excludes the key block), then put into the wrap context, then the DEK is wrapped
/// and the commitment computed.
pub(crate) fn build_header(
    weights: &[SourceWeights],
    kek: &dyn KeyWrapper,
    opts: &SealOptions,
    rng: &SystemRandom,
) -> Result<(Header, Dek, [u8; 32]), CoreError> {
    let mut salt = [0u8; 32];
    rng.fill(&mut salt)
        .map_err(|_| CoreError::Crypto("system RNG"))?;
    let mut files = Vec::with_capacity(weights.len());
    let mut tensors = BTreeMap::new();
    for (i, w) in weights.iter().enumerate() {
        files.push(FileEntry {
            name: data_file_name(i),
            source_name: w.name.clone(),
            plaintext_len: w.len,
            segments: n_segments(w.len, opts.segment_size),
        });
        for (name, t) in &w.tensors {
            let e = TensorEntry {
                dtype: t.dtype.clone(),
                shape: t.shape.clone(),
                file: i as u32,
                data_offsets: t.offsets,
            };
            if tensors.insert(name.clone(), e).is_some() {
                return Err(CoreError::Format {
                    path: w.path.clone(),
                    segment: None,
                    reason: "tensor name repeated across files".into(),
                });
            }
        }
    }
    let mut h = Header {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        aead: opts.aead,
        segment_size: opts.segment_size,
        hash: opts.hash,
        salt: b64e(&salt),
        key: KeyBlock {
            provider: kek.provider(),
            key_id: kek.key_id()?,
            wrapped_dek: String::new(),
            context: opts.context.clone(),
        },
        commitment: String::new(),
        files,
        tensors,
        origin: opts.origin.clone(),
    };
    let internal = |r: String| CoreError::InvalidArgument {
        field: "options",
        problem: r,
    };
    let digest = h.digest().map_err(internal)?;
    h.key
        .context
        .insert(CTX_FORMAT.into(), CTX_FORMAT_VALUE.into());
    h.key
        .context
        .insert(CTX_HEADER_DIGEST.into(), to_hex(&digest));
    let dek = Dek::generate(rng)?;
    h.key.wrapped_dek = b64e(&kek.wrap_dek(&dek, &wrap_aad(&h.key).map_err(internal)?)?);
    h.commitment = b64e(&dek.commitment(&salt, &digest)?);
    h.validate().map_err(internal)?;
    Ok((h, dek, salt))
}
