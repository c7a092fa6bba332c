//! Directory listing: regular files only, no symlinks, UTF-8 names, sorted relative paths.

use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};

use crate::CoreError;

/// Identity of a file as listed, checked again after `open` so a swap between the two is caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileId {
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
    len: u64,
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
            }
        }
        #[cfg(not(unix))]
        {
            FileId { len: meta.len() }
        }
    }
}

/// One regular file found under the root.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) rel: String,
    pub(crate) abs: PathBuf,
    pub(crate) id: FileId,
}

/// List every regular file under `root`, sorted by relative path (byte order of the UTF-8 text).
pub(crate) fn walk(root: &Path) -> Result<Vec<Entry>, CoreError> {
    let meta = fs::symlink_metadata(root).map_err(|e| CoreError::io(root, e))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(CoreError::Symlink {
            path: root.to_path_buf(),
        });
    }
    if !ft.is_dir() {
        return Err(CoreError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    // Explicit stack instead of recursion: depth is bounded by memory, not the thread stack.
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| CoreError::io(&dir, e))?;
        for item in rd {
            let item = item.map_err(|e| CoreError::io(&dir, e))?;
            let abs = item.path();
            let Some(name) = item.file_name().to_str().map(str::to_owned) else {
                return Err(CoreError::NonUtf8Path { path: abs });
            };
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            // DirEntry::metadata does not follow symlinks (lstat).
            let meta = item.metadata().map_err(|e| CoreError::io(&abs, e))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                return Err(CoreError::Symlink { path: abs });
            } else if ft.is_dir() {
                stack.push((abs, rel));
            } else if ft.is_file() {
                out.push(Entry {
                    rel,
                    abs,
                    id: FileId::of(&meta),
                });
            } else {
                return Err(CoreError::NotRegularFile { path: abs });
            }
        }
    }
    out.sort_unstable_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}
