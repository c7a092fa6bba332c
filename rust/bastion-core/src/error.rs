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
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
