//! The record schema: which event fields exist and their types. Content (prompts, completions)
//! has no field; only its keyed HMAC does.

use serde_json::{Map, Value};

use super::limits::MAX_FIELD;

/// Event fields holding a string of at most [`MAX_FIELD`] bytes. Sorted.
pub const STR_FIELDS: &[&str] = &[
    "adapter",
    "adapter_digest",
    "auth_method",
    "client_request_id",
    "completion_hmac",
    "decision",
    "event",
    "finish_reason",
    "level",
    "method",
    "model",
    "model_digest",
    "node",
    "peer",
    "principal",
    "prompt_hmac",
    "reason",
    "replica",
    "replica_checkpoint",
    "request_id",
    "retention",
    "status",
    "tenant",
    "version",
];

/// Event fields holding a non-negative integer. Sorted.
pub const INT_FIELDS: &[&str] = &[
    "cached_tokens",
    "completion_tokens",
    "count",
    "first_ms",
    "free_bytes",
    "last_ms",
    "latency_ms",
    "outage_ms",
    "prompt_tokens",
    "records",
    "recovered_bytes",
    "streams",
];

/// Fields the chain itself writes; callers may not supply them.
pub(crate) const RESERVED: &[&str] = &[
    "hash", "key_id", "kind", "log_id", "prev", "seq", "sig", "time",
];

/// Check that every entry of `m` that is not reserved is a known event field of the right type.
/// The error names the field and the rule, never the value.
pub(crate) fn check_event(m: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in m {
        if RESERVED.contains(&k.as_str()) {
            continue;
        }
        if STR_FIELDS.contains(&k.as_str()) {
            match v {
                Value::String(s) if s.len() <= MAX_FIELD => {}
                Value::String(_) => {
                    return Err(format!("field {k}: longer than {MAX_FIELD} bytes"))
                }
                _ => return Err(format!("field {k}: must be a string")),
            }
        } else if INT_FIELDS.contains(&k.as_str()) {
            if v.as_u64().is_none() {
                return Err(format!("field {k}: must be a non-negative integer"));
            }
        } else {
            return Err(format!("unknown field {}", printable(k)));
        }
    }
    Ok(())
}

/// A field name for an error message: known-safe characters only, at most 64 of them.
fn printable(k: &str) -> String {
    let ok = k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        k.to_owned()
    } else {
        "(unprintable name)".to_owned()
    }
}

/// Whether `m` holds any reserved field (callers may not set them).
pub(crate) fn reserved_in(m: &Map<String, Value>) -> Option<&'static str> {
    RESERVED.iter().copied().find(|r| m.contains_key(*r))
}
