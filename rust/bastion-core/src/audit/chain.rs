//! Sealing records into the chain.

use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value};

use super::fields::{check_event, reserved_in};
use super::hash::{chain_hash, genesis, hex, signed_message};
use super::keys::SigningKey;
use super::limits::MAX_LINE;
use super::time::rfc3339_ms;
use crate::sealed::json::{canonical, parse_strict};
use crate::CoreError;

/// A record's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One inference request (its final outcome).
    Request,
    /// An access-control or admission decision.
    Decision,
    /// A signed checkpoint over the chain so far.
    Checkpoint,
    /// The writer started (carries the log id).
    Start,
    /// The writer stopped cleanly.
    Stop,
}

impl Kind {
    /// The name written in records.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Decision => "decision",
            Kind::Checkpoint => "checkpoint",
            Kind::Start => "start",
            Kind::Stop => "stop",
        }
    }

    /// Parse a record's kind.
    pub fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "request" => Kind::Request,
            "decision" => Kind::Decision,
            "checkpoint" => Kind::Checkpoint,
            "start" => Kind::Start,
            "stop" => Kind::Stop,
            _ => return None,
        })
    }
}

/// One sealed record: its seq, its hash and its line (canonical JSON and `\n`).
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The record's sequence number.
    pub seq: u64,
    /// Its `hash`.
    pub hash: [u8; 32],
    /// The bytes to append.
    pub line: Vec<u8>,
}

/// The state of a log's chain: its id, the next seq and the last hash.
#[derive(Debug, Clone)]
pub struct Chain {
    log_id: String,
    next_seq: u64,
    prev: [u8; 32],
    since_checkpoint: u64,
}

fn invalid(problem: String) -> CoreError {
    CoreError::InvalidArgument {
        field: "fields",
        problem,
    }
}

impl Chain {
    /// A new log with a random 128-bit id (32 hex digits).
    pub fn fresh() -> Result<Chain, CoreError> {
        let mut id = [0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| CoreError::Crypto("system RNG"))?;
        let log_id = hex(&id);
        let prev = genesis(&log_id);
        Ok(Chain {
            log_id,
            next_seq: 0,
            prev,
            since_checkpoint: 0,
        })
    }

    /// Continue a log whose last record had `last_seq` and `last_hash`.
    pub fn resume(log_id: String, last_seq: u64, last_hash: [u8; 32]) -> Chain {
        Chain {
            log_id,
            next_seq: last_seq.saturating_add(1),
            prev: last_hash,
            // The unsigned tail before the restart is covered by the next checkpoint.
            since_checkpoint: 1,
        }
    }

    /// The log id.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last record's hash (the genesis value before the first record).
    pub fn prev(&self) -> [u8; 32] {
        self.prev
    }

    /// Records sealed since the last checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    /// Seal an event record of `kind` (not `Checkpoint`) with the caller's `fields`, stamped
    /// `now_ms` (milliseconds since the Unix epoch). `Start` records also carry the log id.
    pub fn seal(
        &mut self,
        kind: Kind,
        fields: Map<String, Value>,
        now_ms: u64,
    ) -> Result<Sealed, CoreError> {
        if kind == Kind::Checkpoint {
            return Err(invalid("checkpoints are sealed with checkpoint()".into()));
        }
        if let Some(r) = reserved_in(&fields) {
            return Err(invalid(format!("field {r} is set by the log")));
        }
        check_event(&fields).map_err(invalid)?;
        let mut body = fields;
        if kind == Kind::Start {
            body.insert("log_id".into(), Value::String(self.log_id.clone()));
        }
        self.build(kind, body, now_ms, None)
    }

    /// [`Chain::seal`] for callers holding text: `kind` by name (not `checkpoint`) and `json`, a
    /// JSON object of event fields (strict: no duplicate keys). Errors name the argument or field.
    pub fn seal_json(&mut self, kind: &str, json: &[u8], now_ms: u64) -> Result<Sealed, CoreError> {
        let kind = Kind::from_name(kind)
            .filter(|k| *k != Kind::Checkpoint)
            .ok_or_else(|| CoreError::InvalidArgument {
                field: "kind",
                problem: "must be one of request, decision, start, stop".into(),
            })?;
        if json.len() > MAX_LINE {
            return Err(invalid(format!("longer than {MAX_LINE} bytes")));
        }
        match parse_strict(json) {
            Ok(Value::Object(m)) => self.seal(kind, m, now_ms),
            _ => Err(invalid("must be a JSON object of event fields".into())),
        }
    }

    /// Seal a checkpoint signed by `key` over (log id, seq, hash).
    pub fn checkpoint(&mut self, key: &SigningKey, now_ms: u64) -> Result<Sealed, CoreError> {
        let mut body = Map::new();
        body.insert("log_id".into(), Value::String(self.log_id.clone()));
        body.insert("key_id".into(), Value::String(key.public_key().key_id()));
        self.build(Kind::Checkpoint, body, now_ms, Some(key))
    }

    fn build(
        &mut self,
        kind: Kind,
        mut body: Map<String, Value>,
        now_ms: u64,
        key: Option<&SigningKey>,
    ) -> Result<Sealed, CoreError> {
        let seq = self.next_seq;
        body.insert("seq".into(), Value::from(seq));
        body.insert("time".into(), Value::String(rfc3339_ms(now_ms)));
        body.insert("kind".into(), Value::String(kind.name().into()));
        body.insert("prev".into(), Value::String(hex(&self.prev)));
        let canon = canonical(&Value::Object(body.clone())).map_err(invalid)?;
        let hash = chain_hash(&self.prev, &canon);
        if let Some(k) = key {
            let sig = k.sign(&signed_message(&self.log_id, seq, &hash));
            body.insert("sig".into(), Value::String(hex(&sig)));
        }
        body.insert("hash".into(), Value::String(hex(&hash)));
        let mut line = canonical(&Value::Object(body)).map_err(invalid)?;
        if line.len() > MAX_LINE {
            return Err(invalid(format!("record longer than {MAX_LINE} bytes")));
        }
        line.push(b'\n');
        self.next_seq = seq
            .checked_add(1)
            .ok_or_else(|| invalid("seq overflow".into()))?;
        self.prev = hash;
        self.since_checkpoint = if kind == Kind::Checkpoint {
            0
        } else {
            self.since_checkpoint + 1
        };
        Ok(Sealed { seq, hash, line })
    }
}
