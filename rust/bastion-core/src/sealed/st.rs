//! Parsing the header of a source `*.safetensors` file (8-byte LE length + JSON) into index
//! entries, with safetensors' own rules: capped, no duplicate keys, no gaps or overlaps.

use std::collections::BTreeMap;

use serde_json::Value;

use super::json;
use super::limits::{MAX_SAFETENSORS_HEADER, MAX_TEXT};

/// Bits per element of a safetensors dtype; `None` for unknown dtypes.
pub fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Bytes of a tensor of `dtype` and `shape` (`None` on unknown dtype, overflow or a bit count
/// that is not a whole number of bytes).
pub fn tensor_nbytes(dtype: &str, shape: &[u64]) -> Option<u64> {
    if shape.len() > 64 {
        return None;
    }
    let elems = shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d))?;
    let bits = elems.checked_mul(dtype_bits(dtype)?)?;
    (bits % 8 == 0).then_some(bits / 8)
}

/// A plain file name: non-empty, at most 255 bytes, no `/`, `\`, NUL, not `.`-prefixed.
pub fn is_plain_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && !n.starts_with('.') && !n.contains(['/', '\\', '\0'])
}

/// One tensor of a source safetensors file; offsets are absolute in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    /// dtype name.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// `[begin, end)` from the start of the file (header included).
    pub offsets: [u64; 2],
}

/// Parse a safetensors header given its first 8 bytes' value `n`, the `n` JSON bytes and the
/// file length. Returns the tensors with absolute offsets.
pub fn parse_header(
    json_bytes: &[u8],
    file_len: u64,
) -> Result<BTreeMap<String, SourceTensor>, String> {
    let n = json_bytes.len() as u64;
    let data_len = file_len
        .checked_sub(8 + n)
        .ok_or("header length beyond end of file")?;
    let v = json::parse_strict(json_bytes).map_err(|e| format!("safetensors header JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("safetensors header is not an object".into());
    };
    let mut out = BTreeMap::new();
    let mut spans = Vec::with_capacity(map.len());
    for (name, t) in map {
        if name == "__metadata__" {
            let ok = t
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err("__metadata__ must map strings to strings".into());
            }
            continue;
        }
        if name.is_empty() || name.len() > MAX_TEXT {
            return Err(format!("tensor names are 1..{MAX_TEXT} bytes"));
        }
        let t = tensor(&t).ok_or("tensor entry: need dtype, shape, data_offsets only")?;
        let [b, e] = t.offsets;
        if b > e || e > data_len || tensor_nbytes(&t.dtype, &t.shape) != Some(e - b) {
            return Err("tensor entry: offsets, dtype and shape inconsistent".into());
        }
        spans.push((b, e));
        let abs = SourceTensor {
            offsets: [8 + n + b, 8 + n + e],
            ..t
        };
        out.insert(name, abs);
    }
    // safetensors' rule: the data buffer is covered exactly, without gaps or overlaps.
    spans.sort_unstable();
    let mut at = 0u64;
    for (b, e) in spans {
        if b != at {
            return Err("tensor data has a gap or an overlap".into());
        }
        at = e;
    }
    if at != data_len {
        return Err("tensor data does not cover the data buffer exactly".into());
    }
    Ok(out)
}

/// Validate the declared header length against the cap and the file length.
pub fn check_header_len(n: u64, file_len: u64) -> Result<usize, String> {
    if n > MAX_SAFETENSORS_HEADER as u64 || n.saturating_add(8) > file_len {
        return Err(format!(
            "safetensors header length must be at most {MAX_SAFETENSORS_HEADER} and fit the file"
        ));
    }
    Ok(n as usize)
}

fn tensor(v: &Value) -> Option<SourceTensor> {
    let m = v.as_object()?;
    if m.len() != 3 {
        return None;
    }
    let dtype = m.get("dtype")?.as_str()?.to_owned();
    let shape = m
        .get("shape")?
        .as_array()?
        .iter()
        .map(Value::as_u64)
        .collect::<Option<Vec<_>>>()?;
    let offs = m.get("data_offsets")?.as_array()?;
    if offs.len() != 2 {
        return None;
    }
    Some(SourceTensor {
        dtype,
        shape,
        offsets: [offs[0].as_u64()?, offs[1].as_u64()?],
    })
}
