//! Errors that name the file, where in it, and the problem.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file cannot be read or written at all.
    #[error("{}: {io}", path.display())]
    Io { path: PathBuf, io: std::io::Error },
    /// A whole file is unusable (no records, missing column, unknown JSON shape, ...).
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    /// One line, row or record of a file is malformed; `at` says which, as a person
    /// would look for it ("line 3", "row 7").
    #[error("{} {at}: {problem}", path.display())]
    Record {
        path: PathBuf,
        at: String,
        problem: String,
    },
    /// Inconsistent inputs or options.
    #[error("{0}")]
    Usage(String),
}

impl EvalError {
    pub fn io(path: &Path, io: std::io::Error) -> Self {
        EvalError::Io {
            path: path.to_path_buf(),
            io,
        }
    }

    pub fn file(path: &Path, problem: impl Into<String>) -> Self {
        EvalError::File {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub fn record(path: &Path, at: impl Into<String>, problem: impl Into<String>) -> Self {
        EvalError::Record {
            path: path.to_path_buf(),
            at: at.into(),
            problem: problem.into(),
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// Reads a whole file, naming it on failure.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))
}

/// Writes a whole file, creating its folder, naming it on failure.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| EvalError::io(parent, e))?;
    }
    std::fs::write(path, contents).map_err(|e| EvalError::io(path, e))
}
