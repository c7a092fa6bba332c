//! Scanning a source model directory: which files are sealed, copied, skipped or refused.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::io::{open_error, open_nofollow, pread_exact};
use super::st::{self, SourceTensor};
use crate::CoreError;

/// Extensions of pickle-based formats: code execution on load, always refused.
const PICKLE: &[&str] = &["bin", "pt", "pth", "pkl", "pickle", "ckpt", "joblib"];
/// Other weight formats that would leave weights unsealed: refused.
const OTHER_WEIGHTS: &[&str] = &[
    "gguf", "onnx", "h5", "msgpack", "npz", "npy", "tflite", "ot", "pb",
];
/// Plaintext files copied verbatim (configs, tokenizers, chat templates, docs).
const PLAIN_EXT: &[&str] = &[
    "json", "txt", "model", "jinja", "md", "tiktoken", "vocab", "merges",
];
const PLAIN_STEMS: &[&str] = &["LICENSE", "NOTICE", "README", "USE_POLICY"];

/// A source safetensors file, opened once (the same handle is parsed and encrypted).
pub(crate) struct SourceWeights {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) len: u64,
    /// `8 + header length` bytes at the start of the file, as parsed.
    pub(crate) prefix: Vec<u8>,
    pub(crate) tensors: BTreeMap<String, SourceTensor>,
}

/// The result of scanning a source directory.
pub(crate) struct SourcePlan {
    pub(crate) weights: Vec<SourceWeights>,
    pub(crate) copies: Vec<String>,
}

fn ext(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

/// List `src` (top level only). Dot-entries are skipped (`.git`, `.cache`, `.gitattributes`);
/// symlinks, subdirectories, special files, pickle and other weight formats and unknown files are
/// refused; `*.safetensors` are sealed; `*.safetensors.index.json` is superseded by the sealed index.
pub(crate) fn scan(src: &Path) -> Result<SourcePlan, CoreError> {
    let meta = fs::symlink_metadata(src).map_err(|e| CoreError::io(src, e))?;
    if meta.file_type().is_symlink() {
        return Err(CoreError::Symlink {
            path: src.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(CoreError::NotADirectory {
            path: src.to_path_buf(),
        });
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(src).map_err(|e| CoreError::io(src, e))? {
        let entry = entry.map_err(|e| CoreError::io(src, e))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| CoreError::NonUtf8Path { path: path.clone() })?;
        if name.starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(|e| CoreError::io(&path, e))?;
        if ft.is_symlink() {
            return Err(CoreError::Symlink { path });
        }
        if ft.is_dir() {
            return Err(CoreError::Refused {
                path,
                reason: "subdirectories are not supported",
            });
        }
        if !ft.is_file() {
            return Err(CoreError::NotRegularFile { path });
        }
        names.push(name);
    }
    names.sort();
    let mut plan = SourcePlan {
        weights: Vec::new(),
        copies: Vec::new(),
    };
    for name in names {
        let path = src.join(&name);
        let e = ext(&name);
        let stem = name.split('.').next().unwrap_or_default();
        if PICKLE.contains(&e.as_str()) {
            return Err(CoreError::Refused {
                path,
                reason: "pickle format (executes code on load)",
            });
        }
        if OTHER_WEIGHTS.contains(&e.as_str()) {
            return Err(CoreError::Refused {
                path,
                reason: "weight format that cannot be sealed",
            });
        }
        if e == "safetensors" {
            plan.weights.push(open_weights(name, path)?);
        } else if name.ends_with(".safetensors.index.json") {
            // Superseded by the sealed tensor index.
        } else if (PLAIN_EXT.contains(&e.as_str()) || PLAIN_STEMS.contains(&stem))
            && st::is_plain_name(&name)
        {
            plan.copies.push(name);
        } else {
            return Err(CoreError::Refused {
                path,
                reason: "not an allowed plaintext file",
            });
        }
    }
    if plan.weights.is_empty() {
        return Err(CoreError::Format {
            path: src.to_path_buf(),
            segment: None,
            reason: "no *.safetensors files".into(),
        });
    }
    Ok(plan)
}

fn open_weights(name: String, path: PathBuf) -> Result<SourceWeights, CoreError> {
    let fmt = |reason: String| CoreError::Format {
        path: path.clone(),
        segment: None,
        reason,
    };
    let file = open_nofollow(&path).map_err(|e| open_error(&path, e))?;
    let meta = file.metadata().map_err(|e| CoreError::io(&path, e))?;
    if !meta.file_type().is_file() {
        return Err(CoreError::NotRegularFile { path });
    }
    let len = meta.len();
    if len < 8 {
        return Err(fmt("shorter than the 8-byte header length".into()));
    }
    let mut n = [0u8; 8];
    pread_exact(&file, &mut n, 0).map_err(|e| CoreError::io(&path, e))?;
    let n = st::check_header_len(u64::from_le_bytes(n), len).map_err(fmt)?;
    let mut prefix = vec![0u8; 8 + n];
    pread_exact(&file, &mut prefix, 0).map_err(|e| CoreError::io(&path, e))?;
    let tensors = st::parse_header(&prefix[8..], len).map_err(fmt)?;
    Ok(SourceWeights {
        name,
        path,
        file,
        len,
        prefix,
        tensors,
    })
}
