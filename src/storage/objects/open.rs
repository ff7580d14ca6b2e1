//! Opening a location as a store: local directories through `LocalFileSystem`, URLs through
//! `object_store`'s clients, built from the environment (`AmazonS3Builder::from_env()` and its
//! GCS and Azure equivalents: credential chains, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...) and
//! then the job's options, with one retry policy. Unlike `object_store::parse_url_opts`, an
//! option the client does not know is an error, never ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreScheme};

use crate::error::{Error, Result};
use crate::storage::Location;

/// What to do when a local directory does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MissingDir {
    /// An input: an error naming it.
    Refuse,
    /// An output: created, with its parents.
    Create,
}

/// A store as opened, before it is given the job's runtime.
pub(super) struct Opened {
    pub inner: Arc<dyn ObjectStore>,
    pub root: ObjectPath,
    pub url: String,
    pub local: bool,
}

/// A single object's parent, opened, and the object's name in it.
pub(super) struct OpenedObject {
    pub store: Opened,
    pub name: String,
}

/// Opens `location` as a directory (a prefix).
pub(super) fn open_dir(
    location: &Location,
    options: &[(String, String)],
    missing: MissingDir,
) -> Result<Opened> {
    match location {
        Location::Path(dir) => open_local(dir, location.to_string(), missing),
        Location::Url(url) if url.scheme() == "file" => {
            open_local(&file_url_path(url)?, url.to_string(), missing)
        }
        Location::Url(url) => {
            let (scheme, root) = recognise(url)?;
            Ok(Opened {
                inner: cloud::build(url, &scheme, options)?,
                root,
                url: url.to_string(),
                local: false,
            })
        }
    }
}

/// Opens the parent of the object `location` names (which must exist locally).
pub(super) fn open_parent(
    location: &Location,
    options: &[(String, String)],
) -> Result<OpenedObject> {
    let no_name = || Error::invalid(format!("{location}: names a directory, not an object"));
    match location {
        Location::Path(path) => {
            let name = location.file_name().ok_or_else(no_name)?;
            let parent = local_parent(path);
            let store = open_local(&parent, parent.display().to_string(), MissingDir::Refuse)?;
            Ok(OpenedObject { store, name })
        }
        Location::Url(url) if url.scheme() == "file" => {
            let path = file_url_path(url)?;
            let name = location.file_name().ok_or_else(no_name)?;
            let store = open_local(&local_parent(&path), parent_url(url), MissingDir::Refuse)?;
            Ok(OpenedObject { store, name })
        }
        Location::Url(url) => {
            let (scheme, path) = recognise(url)?;
            let name = path.filename().ok_or_else(no_name)?.to_string();
            let root = path.parent().unwrap_or_default();
            let store = Opened {
                inner: cloud::build(url, &scheme, options)?,
                root,
                url: parent_url(url),
                local: false,
            };
            Ok(OpenedObject { store, name })
        }
    }
}

/// A local directory as a store rooted at it; `shown` is how messages name it.
fn open_local(dir: &Path, shown: String, missing: MissingDir) -> Result<Opened> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(Error::format(&shown, "is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing == MissingDir::Create => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(&shown, e))?;
        }
        Err(e) => return Err(Error::io(&shown, e)),
    }
    let inner = LocalFileSystem::new_with_prefix(dir).map_err(|e| Error::storage(&shown, e))?;
    Ok(Opened {
        inner: Arc::new(inner),
        root: ObjectPath::default(),
        url: shown,
        local: true,
    })
}

fn file_url_path(url: &url::Url) -> Result<PathBuf> {
    url.to_file_path().map_err(|()| {
        Error::invalid(format!(
            "{url}: not a local file URL (expected file:///absolute/path)"
        ))
    })
}

/// The directory holding a local file (`.` for a bare file name).
fn local_parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The URL of the "directory" holding the object `url` names, with a trailing `/`.
fn parent_url(url: &url::Url) -> String {
    let mut parent = url.clone();
    let path = url.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    parent.set_path(dir);
    parent.set_query(None);
    parent.set_fragment(None);
    parent.to_string()
}

/// Which client serves `url`, and the key prefix it designates (the store's root).
fn recognise(url: &url::Url) -> Result<(ObjectStoreScheme, ObjectPath)> {
    let unsupported = || {
        Error::invalid(format!(
            "{url}: unsupported storage scheme '{}' (supported: plain paths, file://, s3://, gs://, az://, abfs://, http://, https://)",
            url.scheme()
        ))
    };
    let (scheme, root) = ObjectStoreScheme::parse(url).map_err(|_| unsupported())?;
    match scheme {
        ObjectStoreScheme::AmazonS3
        | ObjectStoreScheme::GoogleCloudStorage
        | ObjectStoreScheme::MicrosoftAzure
        | ObjectStoreScheme::Http => Ok((scheme, root)),
        // memory:// (a store private to one call) and file:// (handled above).
        _ => Err(unsupported()),
    }
}

#[cfg(not(feature = "cloud"))]
mod cloud {
    use super::*;

    /// Without the `cloud` feature, only local files are supported.
    pub(super) fn build(
        url: &url::Url,
        _scheme: &ObjectStoreScheme,
        _options: &[(String, String)],
    ) -> Result<Arc<dyn ObjectStore>> {
        Err(Error::invalid(format!(
            "{url}: this build has no object-store support for {}:// (built without the 'cloud' feature)",
            url.scheme()
        )))
    }
}

#[cfg(feature = "cloud")]
mod cloud {
    use std::str::FromStr;
    use std::time::Duration;

    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    use object_store::http::HttpBuilder;
    use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};

    use super::*;

    /// Retries of a failed request (server errors, throttling, dropped connections), with
    /// exponential backoff and jitter, within [`RETRY_TIMEOUT`] of the first attempt.
    const MAX_RETRIES: usize = 10;
    const RETRY_TIMEOUT: Duration = Duration::from_secs(3 * 60);
    /// Time allowed to open a connection (unless the environment or an option sets it).
    const CONNECT_TIMEOUT: &str = "10 seconds";

    fn retry_config() -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        }
    }

    /// The client for `url`: the environment's configuration, then the connect timeout and
    /// retry policy, then `options` (a key the client does not know is an error naming it).
    pub(super) fn build(
        url: &url::Url,
        scheme: &ObjectStoreScheme,
        options: &[(String, String)],
    ) -> Result<Arc<dyn ObjectStore>> {
        let shown = url.to_string();
        let built: object_store::Result<Arc<dyn ObjectStore>> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                let builder = configure(
                    AmazonS3Builder::from_env().with_url(shown.clone()),
                    "AWS_",
                    AmazonS3ConfigKey::Client,
                    options,
                    url,
                    AmazonS3Builder::with_config,
                )?;
                builder.with_retry(retry_config()).build().map(as_store)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let builder = configure(
                    GoogleCloudStorageBuilder::from_env().with_url(shown.clone()),
                    "GOOGLE_",
                    GoogleConfigKey::Client,
                    options,
                    url,
                    GoogleCloudStorageBuilder::with_config,
                )?;
                builder.with_retry(retry_config()).build().map(as_store)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let builder = configure(
                    MicrosoftAzureBuilder::from_env().with_url(shown.clone()),
                    "AZURE_",
                    AzureConfigKey::Client,
                    options,
                    url,
                    MicrosoftAzureBuilder::with_config,
                )?;
                builder.with_retry(retry_config()).build().map(as_store)
            }
            _ => {
                // Read-only HTTP(S): the origin is the client's base; the path is the root.
                let origin = &url[..url::Position::BeforePath];
                let builder = configure(
                    HttpBuilder::new().with_url(origin),
                    "",
                    |key| key,
                    options,
                    url,
                    HttpBuilder::with_config,
                )?;
                builder.with_retry(retry_config()).build().map(as_store)
            }
        };
        built.map_err(|e| Error::storage(shown, e))
    }

    fn as_store<S: ObjectStore>(store: S) -> Arc<dyn ObjectStore> {
        Arc::new(store)
    }

    /// Applies the connect timeout (unless an `env_prefix` variable of the environment set one)
    /// and then `options`, whose keys (any case) must parse as `K`.
    fn configure<B, K: FromStr + PartialEq>(
        mut builder: B,
        env_prefix: &str,
        client_key: impl Fn(ClientConfigKey) -> K,
        options: &[(String, String)],
        url: &url::Url,
        with_config: impl Fn(B, K, String) -> B,
    ) -> Result<B> {
        let connect_timeout = client_key(ClientConfigKey::ConnectTimeout);
        let env_sets_timeout = !env_prefix.is_empty()
            && std::env::vars().any(|(key, _)| {
                key.starts_with(env_prefix)
                    && key.to_ascii_lowercase().parse::<K>().ok()
                        == Some(client_key(ClientConfigKey::ConnectTimeout))
            });
        if !env_sets_timeout {
            builder = with_config(builder, connect_timeout, CONNECT_TIMEOUT.to_string());
        }
        for (key, value) in options {
            let parsed = key.to_ascii_lowercase().parse::<K>().map_err(|_| {
                Error::invalid(format!(
                    "{url}: unknown storage option '{key}' for {}:// URLs",
                    url.scheme()
                ))
            })?;
            builder = with_config(builder, parsed, value.clone());
        }
        Ok(builder)
    }
}
