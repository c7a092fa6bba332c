//! The one error type of the core. Variants carry paths (for server logs), never file contents.

use std::io;
use std::path::PathBuf;

/// Every failure the core can report. `#[non_exhaustive]`: bindings must fall closed on variants
/// they do not know.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// An operating-system I/O error while reading `path`.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The path being read or listed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A symbolic link was found where only regular files and directories are accepted.
    #[error("symlink refused: {}", path.display())]
    Symlink {
        /// The link itself (not its target).
        path: PathBuf,
    },
    /// A FIFO, socket, device or other non-regular file was found.
    #[error("not a regular file or directory: {}", path.display())]
    NotRegularFile {
        /// The offending entry.
        path: PathBuf,
    },
    /// The digest root is not a directory.
    #[error("not a directory: {}", path.display())]
    NotADirectory {
        /// The root that was given.
        path: PathBuf,
    },
    /// A file or directory name is not valid UTF-8.
    #[error("file name is not valid UTF-8: {}", path.display())]
    NonUtf8Path {
        /// The offending entry (displayed lossily).
        path: PathBuf,
    },
    /// The file was replaced, grew or shrank between listing and hashing.
    #[error("file changed while it was being hashed: {}", path.display())]
    FileChanged {
        /// The file.
        path: PathBuf,
    },
    /// A streaming object was used after `finalize()`.
    #[error("object already finalized")]
    AlreadyFinalized,
    /// A sealed-format or safetensors file is malformed (bad magic, JSON, field, limit or size).
    /// `segment` names the segment where one is involved.
    #[error("malformed {}{}: {reason}", path.display(), seg_suffix(*segment))]
    Format {
        /// The file that is malformed.
        path: PathBuf,
        /// The segment concerned, if any.
        segment: Option<u64>,
        /// What is wrong (names the field and the limit, never echoes contents).
        reason: String,
    },
    /// An integrity check failed: ciphertext hash, AEAD tag (tampered or wrong key), key
    /// commitment, key unwrap, or a data file whose size does not match the header.
    #[error("integrity check failed on {}{}: {reason}", path.display(), seg_suffix(*segment))]
    Integrity {
        /// The file that failed.
        path: PathBuf,
        /// The segment that failed, if any.
        segment: Option<u64>,
        /// Which check failed.
        reason: String,
    },
    /// A source file in a format that can execute code (pickle) or is not allowed in a sealed
    /// directory.
    #[error("refused {}: {reason}", path.display())]
    Refused {
        /// The offending file.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A key file has permissions other than 0600/0400, or is not exactly 32 bytes.
    #[error("insecure or invalid key file {}: {reason}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A caller-supplied argument is invalid (range out of bounds, unknown tensor, bad option).
    #[error("invalid argument {field}: {problem}")]
    InvalidArgument {
        /// The argument's name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The system random number generator or a crypto primitive failed unexpectedly.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}

fn seg_suffix(segment: Option<u64>) -> String {
    segment.map(|s| format!(" segment {s}")).unwrap_or_default()
}
