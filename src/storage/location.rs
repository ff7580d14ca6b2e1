//! A place a user names on the command line or through an API: a plain path or a URL.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A plain path, or a URL with a scheme (`s3://bucket/prefix`, `file:///abs/dir`, ...).
///
/// Anything that starts with `scheme://` is a URL (the scheme is letters, digits, `+`, `-`,
/// `.`, starting with a letter); everything else is a path, so a file literally named
/// `s3:/x` stays a path. Which schemes are supported is decided when a store is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Path(PathBuf),
    Url(url::Url),
}

impl Location {
    /// Parses what a user typed. A URL that does not parse is an error naming it.
    pub fn parse(s: &str) -> Result<Location> {
        if s.is_empty() {
            return Err(Error::invalid("an empty path names nothing"));
        }
        match s.split_once("://") {
            Some((scheme, _)) if is_scheme(scheme) => url::Url::parse(s)
                .map(Location::Url)
                .map_err(|e| Error::invalid(format!("{s}: not a valid URL ({e})"))),
            _ => Ok(Location::Path(PathBuf::from(s))),
        }
    }

    /// The local path, for a plain path or a `file://` URL.
    pub fn local_path(&self) -> Option<PathBuf> {
        match self {
            Location::Path(p) => Some(p.clone()),
            Location::Url(u) if u.scheme() == "file" => u.to_file_path().ok(),
            Location::Url(_) => None,
        }
    }

    /// A plain path (not a URL of any scheme, `file://` included).
    pub fn as_plain_path(&self) -> Option<&Path> {
        match self {
            Location::Path(p) => Some(p),
            Location::Url(_) => None,
        }
    }

    pub fn is_url(&self) -> bool {
        matches!(self, Location::Url(_))
    }

    /// The last component (file or object name), if any.
    pub fn file_name(&self) -> Option<String> {
        match self {
            Location::Path(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            Location::Url(u) => u
                .path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
                .filter(|n| !n.is_empty()),
        }
    }
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Path(p) => write!(f, "{}", p.display()),
            Location::Url(u) => write!(f, "{u}"),
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Path(p)
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Self {
        Location::Path(p.clone())
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Path(p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_and_everything_else_is_a_path() {
        let s3 = Location::parse("s3://bucket/emb/").unwrap();
        assert!(s3.is_url());
        assert_eq!(s3.local_path(), None);
        assert_eq!(s3.to_string(), "s3://bucket/emb/");
        let file = Location::parse("file:///tmp/x").unwrap();
        assert_eq!(file.local_path(), Some(PathBuf::from("/tmp/x")));
        assert_eq!(file.as_plain_path(), None);
        for path in ["emb/", "/abs/a.npy", "s3:/x", "1a://b", "./s3://x"] {
            assert_eq!(
                Location::parse(path).unwrap(),
                Location::Path(PathBuf::from(path)),
                "{path}"
            );
        }
        let err = Location::parse("s3://bad host/x").unwrap_err().to_string();
        assert!(err.starts_with("s3://bad host/x: not a valid URL"), "{err}");
        assert_eq!(
            Location::parse("s3://b/p/a.npy").unwrap().file_name(),
            Some("a.npy".into())
        );
    }
}
