//! Shared fixtures for the sealed-format tests (included with `#[path]`; no tests of its own).
// Test fixtures: a failed unwrap/expect/panic is the test failing, by design; and each test crate that
// includes this file uses only some of the helpers (dead_code).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use bastion_core::sealed::{self, KeyEncryptionKey, SealOptions};

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A safetensors file with `tensors` = (name, dtype, shape); returns its bytes.
pub fn safetensors(tensors: &[(&str, &str, Vec<u64>)], seed: u64) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut at = 0u64;
    for (name, dtype, shape) in tensors {
        let n = sealed::tensor_nbytes(dtype, shape).unwrap();
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{at},{}]}}",
            at + n
        ));
        at += n;
    }
    let mut json = format!(
        "{{\"__metadata__\":{{\"format\":\"pt\"}},{}}}",
        entries.join(",")
    );
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend(bytes(seed, at as usize));
    out
}

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub kek: PathBuf,
}

impl Fixture {
    pub fn sealed(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Two shards (~300 KiB and ~70 KiB) + config/tokenizer files, and a KEK.
pub fn source() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let a = safetensors(
        &[
            ("embed.weight", "F32", vec![256, 128]),
            ("layers.0.w", "BF16", vec![300, 100]),
            ("layers.0.b", "F16", vec![7]),
            ("scalar", "I64", vec![]),
            ("empty", "F32", vec![0, 4]),
        ],
        1,
    );
    let b = safetensors(
        &[
            ("lm_head.weight", "F32", vec![100, 170]),
            ("flag", "BOOL", vec![3]),
        ],
        2,
    );
    fs::write(src.join("model-00001-of-00002.safetensors"), a).unwrap();
    fs::write(src.join("model-00002-of-00002.safetensors"), b).unwrap();
    fs::write(src.join("model.safetensors.index.json"), b"{}").unwrap();
    fs::write(src.join("config.json"), br#"{"model_type":"llama"}"#).unwrap();
    fs::write(src.join("tokenizer.json"), br#"{"version":"1.0"}"#).unwrap();
    fs::write(src.join(".gitattributes"), b"*.safetensors lfs").unwrap();
    let kek = tmp.path().join("kek");
    KeyEncryptionKey::create_file(&kek).unwrap();
    Fixture { tmp, src, kek }
}

pub fn opts_small() -> SealOptions {
    SealOptions {
        segment_size: 64 << 10,
        ..SealOptions::default()
    }
}

pub fn seal(fx: &Fixture, name: &str) -> PathBuf {
    let out = fx.sealed(name);
    sealed::seal_dir(&fx.src, &out, &fx.kek, &opts_small()).unwrap();
    out
}

/// Flip one bit of `path` at `offset`.
pub fn flip(path: &Path, offset: usize) {
    let mut b = fs::read(path).unwrap();
    b[offset] ^= 0x10;
    fs::write(path, b).unwrap();
}

/// Offsets in weights.ctxh: (json start, json end, tag table start, hash table start).
pub fn ctxh_layout(dir: &Path) -> (usize, usize, usize, usize) {
    let b = fs::read(dir.join("weights.ctxh")).unwrap();
    let n = u64::from_le_bytes(b[12..20].try_into().unwrap()) as usize;
    let c = sealed::decode_container(dir, &b).unwrap();
    let segs = c.tags.len();
    (20, 20 + n, 20 + n, 20 + n + 16 * segs)
}
