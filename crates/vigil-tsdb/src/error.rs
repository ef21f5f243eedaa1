//! The store's error type.

use std::path::PathBuf;

use vigil_model::LabelError;

/// Result alias for the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open WAL segment", "fsync block index", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file's content is damaged.
    #[error("corrupt {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file was written by a newer version of Vigil.
    #[error(
        "{path} has format version {found}; this build reads up to {supported}. Upgrade Vigil to open it"
    )]
    FutureFormat {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A series in a write has labels that break the naming rules or limits.
    #[error("series {series_index} in batch: {source}")]
    InvalidLabels {
        /// Index of the series in the batch.
        series_index: usize,
        /// The rule broken.
        source: LabelError,
    },
    /// An option is invalid.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A matcher in a delete or read request cannot be used.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The WAL failed earlier; the store refuses writes until reopened.
    #[error("the store refuses writes after an earlier WAL failure: {0}")]
    Poisoned(String),
    /// Another process holds the data directory.
    #[error("data directory {path} is locked by another process (lock file {lock})")]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

/// Coarse classes of errors, for mapping to statuses at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something invalid.
    InvalidInput,
    /// Data on disk is damaged.
    Corrupt,
    /// The store cannot serve now (I/O failure, poisoned WAL, locked directory).
    Unavailable,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidLabels { .. }
            | Error::InvalidOption { .. }
            | Error::InvalidRequest(_) => ErrorKind::InvalidInput,
            Error::Corrupt { .. } | Error::FutureFormat { .. } => ErrorKind::Corrupt,
            Error::Io { .. } | Error::Poisoned(_) | Error::Locked { .. } => ErrorKind::Unavailable,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
