//! Errors of the model side.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {problem}", file.display())]
    File { file: PathBuf, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn file(file: &Path, problem: impl Into<String>) -> Self {
        ModelError::File {
            file: file.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub fn invalid(problem: impl Into<String>) -> Self {
        ModelError::Invalid(problem.into())
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
