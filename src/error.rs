//! One error type for the whole crate. Every variant carries what a caller needs to act on it:
//! the file, what was expected and what was found. The CLI prints it (adding its own hints, keyed
//! on the variant); the C ABI maps it to a status code in exactly one `match` (see `ffi`).
//!
//! The model, shared by every layer:
//! - A layer that knows which file an error is about, but did not produce it, wraps it with
//!   [`Error::in_file`] (as ripgrep's `ignore::Error::WithPath` does) instead of rewriting its
//!   message; [`Error::root`] gives back the variant underneath for status mapping and hints.
//! - Row numbers in [`Error::NonFiniteRow`] and [`Error::Unrepresentable`] are relative to the
//!   rows the reporting layer was given; a layer that knows the absolute position (the engine,
//!   within a shard) re-bases them with [`Error::offset_rows`] before wrapping.
//! - Library messages never name CLI flags or C option setters: each front end adds its own.

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
    /// An object store (or the local file system behind the same interface) refused or failed a
    /// request: `url` is the object or prefix, `source` the client's error after its retries.
    #[error("{url}: {source}")]
    Storage {
        url: String,
        #[source]
        source: object_store::Error,
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
    #[error("row {row} contains NaN or Inf")]
    NonFiniteRow { row: usize },
    /// A row's result cannot be represented in the output type (an f16 output beyond ±65504, a
    /// non-finite result from finite input); `row` as in `NonFiniteRow`.
    #[error("row {row}: {message}")]
    Unrepresentable { row: usize, message: String },
    /// Memory (or threads, or another bounded resource) could not be obtained.
    #[error("{0}")]
    ResourceExhausted(String),
    /// An error about a particular file, raised by a layer that does not know the file.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
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
    pub fn storage(url: impl Into<String>, source: object_store::Error) -> Self {
        Error::Storage {
            url: url.into(),
            source,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// Attaches the file this error is about (no-op when it already names that file).
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        if self.path() == Some(path) {
            return self;
        }
        Error::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }

    /// The variant underneath any `InFile` wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::InFile { source, .. } => source.root(),
            e => e,
        }
    }

    /// The outermost file this error names, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::Format { path, .. }
            | Error::Unsupported { path, .. }
            | Error::TensorNotFound { path, .. }
            | Error::InFile { path, .. } => Some(path),
            Error::Storage { url, .. } => Some(Path::new(url.as_str())),
            _ => None,
        }
    }

    /// Re-bases the row number of a row error by `offset` (the position of the rows the
    /// reporting layer was given inside a larger array); other errors are returned unchanged.
    pub fn offset_rows(self, offset: usize) -> Self {
        match self {
            Error::NonFiniteRow { row } => Error::NonFiniteRow { row: row + offset },
            Error::Unrepresentable { row, message } => Error::Unrepresentable {
                row: row + offset,
                message,
            },
            Error::InFile { path, source } => Error::InFile {
                path,
                source: Box::new(source.offset_rows(offset)),
            },
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_file_wraps_once_and_root_sees_through() {
        let e = Error::NonFiniteRow { row: 3 }
            .offset_rows(100)
            .in_file("/data/a.npy");
        assert_eq!(e.to_string(), "/data/a.npy: row 103 contains NaN or Inf");
        assert!(matches!(e.root(), Error::NonFiniteRow { row: 103 }));
        let f = Error::format("/data/a.npy", "bad header").in_file("/data/a.npy");
        assert_eq!(f.to_string(), "/data/a.npy: bad header");
        assert_eq!(
            e.offset_rows(1).root().to_string(),
            "row 104 contains NaN or Inf"
        );
    }
}
