//! One error type for the whole crate. Every variant carries what a caller needs to act on it:
//! the file, what was expected and what was found. The CLI prints it; the C ABI maps it to a
//! status code in exactly one `match` (see `ffi`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read, write, rename or sync.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what its format promises (bad header, truncated, ...).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// A file is well formed but uses something we do not support (dtype, layout, version).
    #[error("{}: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    /// Two shapes that must agree do not; the message names both numbers.
    #[error("{0}")]
    Shape(String),
    /// A checkpoint lacks the tensors we need; lists the names that were there.
    #[error("{}: {message}", path.display())]
    TensorNotFound { path: PathBuf, message: String },
    /// NaN or Inf where finite numbers are required.
    #[error("{0}")]
    NonFinite(String),
    /// An input row holds NaN or Inf; `row` is 0-based within the rows passed to the call.
    #[error("row {row} contains NaN or Inf (pass --nonfinite zero to write zeros for such rows instead)")]
    NonFiniteRow { row: usize },
    /// The requested band keeps no direction, or is otherwise impossible.
    #[error("{0}")]
    Band(String),
    /// A numerical routine failed (SVD did not converge, singular factor).
    #[error("{0}")]
    Numerical(String),
    /// The user asked for something inconsistent (flags, modes, paths).
    #[error("{0}")]
    InvalidArgument(String),
    /// A run was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
    /// The GPU path was requested but is not usable here.
    #[error("{0}")]
    DeviceUnavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
    pub fn unsupported(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}
