//! An incremental BLAKE3 hasher with an explicit finalized state.

use crate::CoreError;

/// Inputs at least this long are hashed with `update_rayon` (multi-threaded).
pub const PARALLEL_UPDATE_MIN: usize = 1 << 20;

/// Incremental BLAKE3. `finalize` consumes the state; any use afterwards is
/// [`CoreError::AlreadyFinalized`].
#[derive(Debug)]
pub struct Blake3Stream {
    state: Option<blake3::Hasher>,
}

impl Blake3Stream {
    /// A fresh hasher.
    pub fn new() -> Self {
        Blake3Stream {
            state: Some(blake3::Hasher::new()),
        }
    }

    /// Absorb `data`. Large inputs are hashed on the rayon pool.
    pub fn update(&mut self, data: &[u8]) -> Result<(), CoreError> {
        let h = self.state.as_mut().ok_or(CoreError::AlreadyFinalized)?;
        if data.len() >= PARALLEL_UPDATE_MIN {
            h.update_rayon(data);
        } else {
            h.update(data);
        }
        Ok(())
    }

    /// The digest of everything absorbed; the hasher is unusable afterwards.
    pub fn finalize(&mut self) -> Result<[u8; 32], CoreError> {
        let h = self.state.take().ok_or(CoreError::AlreadyFinalized)?;
        Ok(*h.finalize().as_bytes())
    }

    /// Whether `finalize` has been called.
    pub fn is_finalized(&self) -> bool {
        self.state.is_none()
    }
}

impl Default for Blake3Stream {
    fn default() -> Self {
        Self::new()
    }
}
