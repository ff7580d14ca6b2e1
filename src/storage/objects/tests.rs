//! The store layer against `LocalFileSystem` in a temporary directory (plain paths and
//! `file://` URLs): listings, bounded GETs, create-only PUTs, header inspection, streaming reads
//! and atomic uploads; and the errors of opening cloud URLs, which need no network. (That the
//! store's header checks and wording are the local reader's is tested in `engine::reader`.)

use std::path::{Path, PathBuf};

use super::*;
use crate::formats::npy::header_bytes;

fn context() -> StorageContext {
    StorageContext::new(Vec::new()).unwrap()
}

fn file_url(path: &Path) -> Location {
    Location::Url(url::Url::from_file_path(path).unwrap())
}

/// A shard of `rows` x `cols` f16 whose element i is the f16 with bits `i % 65536`, so every
/// byte read can be checked against its position. Returns the file's data bytes.
fn numbered_shard(path: &Path, rows: usize, cols: usize) -> Vec<u8> {
    let mut bytes = header_bytes(NpyDtype::F16, &[rows, cols]);
    let data: Vec<u8> = (0..rows * cols)
        .flat_map(|i| ((i % 65536) as u16).to_le_bytes())
        .collect();
    bytes.extend_from_slice(&data);
    std::fs::write(path, &bytes).unwrap();
    data
}

fn names(objects: &[ObjectInfo]) -> Vec<&str> {
    objects.iter().map(|o| o.name.as_str()).collect()
}

#[test]
fn listing_is_sorted_and_skips_hidden_private_other_and_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in [
        "b.npy",
        "a.npy",
        ".hidden.npy",
        "_isoclip.npy",
        "notes.txt",
        "c.npy#1",
        "sub/x.npy",
        "sub/deeper/y.npy",
        "sub/y.npy#2",
    ] {
        std::fs::create_dir_all(d.join(name).parent().unwrap()).unwrap();
        std::fs::write(d.join(name), b"x").unwrap();
    }
    std::fs::create_dir(d.join("dir.npy")).unwrap();
    let store = context().open(&Location::Path(d.to_path_buf())).unwrap();
    assert!(store.is_local());
    // An upload in progress writes a staging file next to its target: never listed.
    let mut upload = store.upload("sub/z.npy").unwrap();
    upload.write_all(b"partial").unwrap();
    assert_eq!(names(&store.list_npy().unwrap()), ["a.npy", "b.npy"]);
    assert_eq!(
        names(&store.list_under("sub").unwrap()),
        ["sub/deeper/y.npy", "sub/x.npy"]
    );
    upload.abort();
    assert_eq!(store.list_under("none").unwrap(), Vec::new());
    let a = &store.list_npy().unwrap()[0];
    assert_eq!(a.size, 1);
    assert_eq!(store.head("a.npy").unwrap().as_ref(), Some(a));

    let empty = d.join("sub/deeper");
    std::fs::remove_file(empty.join("y.npy")).unwrap();
    let err = context().open(&file_url(&empty)).unwrap().list_npy();
    assert_eq!(
        err.unwrap_err().to_string(),
        format!("file://{}: holds no .npy shards", empty.display())
    );
}

#[test]
fn inputs_must_exist_and_outputs_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = context()
        .open(&Location::Path(missing.clone()))
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
    let out = missing.join("out");
    let store = context().open_output(&file_url(&out)).unwrap();
    assert!(out.is_dir());
    assert_eq!(
        store.url_of("a.npy"),
        format!("file://{}/a.npy", out.display())
    );
    std::fs::write(dir.path().join("f"), b"").unwrap();
    let err = context()
        .open(&Location::Path(dir.path().join("f")))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!("{}: is not a directory", dir.path().join("f").display())
    );
}

#[test]
fn single_objects_open_their_parent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.bin"), b"projector").unwrap();
    let location = file_url(&dir.path().join("p.bin"));
    let (store, name) = context().open_object(&location).unwrap();
    assert_eq!(name, "p.bin");
    assert_eq!(store.url_of(&name), location.to_string());
    assert_eq!(
        store.get_bounded(&name, 100, "a projector file").unwrap(),
        Some(b"projector".to_vec())
    );
    let err = context()
        .open_object(&Location::parse(&format!("file://{}/sub/", dir.path().display())).unwrap())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .ends_with("names a directory, not an object"),
        "{err}"
    );
}

#[test]
fn bounded_gets_refuse_large_objects_by_url() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.bin"), [7u8; 100]).unwrap();
    let store = context().open(&file_url(dir.path())).unwrap();
    let err = store
        .get_bounded("p.bin", 99, "a projector file")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "file://{}/p.bin: is 100 bytes, more than a projector file can be (99 bytes at most)",
            dir.path().display()
        )
    );
    assert_eq!(
        store.get_bounded("p.bin", 100, "x").unwrap(),
        Some(vec![7u8; 100])
    );
    assert_eq!(store.get_bounded("none.bin", 100, "x").unwrap(), None);
}

#[test]
fn create_only_puts_never_replace_and_puts_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = context()
        .open(&Location::Path(dir.path().to_path_buf()))
        .unwrap();
    let name = "_isoclip/claims/a.npy";
    assert_eq!(
        store.put_create(name, b"first".to_vec()).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put_create(name, b"second".to_vec()).unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b"first");
    let info = store.put(name, b"third!".to_vec()).unwrap();
    assert_eq!((info.name.as_str(), info.size), (name, 6));
    assert_eq!(store.head(name).unwrap(), Some(info));
    store.delete(name).unwrap();
    assert_eq!(store.head(name).unwrap(), None);
    store.delete(name).unwrap();
}

#[test]
fn headers_longer_than_the_first_read_are_read_whole() {
    // A version-1 header padded to 5,056 bytes (numpy allows up to 10,000): two GETs.
    let dir = tempfile::tempdir().unwrap();
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }";
    let total = 5056;
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.resize(total - 1, b' ');
    bytes.push(b'\n');
    bytes.extend_from_slice(&[0; 24]);
    std::fs::write(dir.path().join("long.npy"), &bytes).unwrap();
    let store = context()
        .open(&Location::Path(dir.path().to_path_buf()))
        .unwrap();
    let shards = store.inspect_shards(&store.list_npy().unwrap()).unwrap();
    assert_eq!(
        (shards[0].rows, shards[0].cols, shards[0].data_offset),
        (3, 2, total as u64)
    );
}

/// Streams the only shard of `store` in chunks of `chunk_rows`: its bytes and the chunks'
/// (start, rows).
fn stream_all(store: &Store, chunk_rows: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
    let shard = store.inspect_shards(&store.list_npy().unwrap()).unwrap();
    let (mut bytes, mut chunks) = (Vec::new(), Vec::new());
    store
        .reader(&shard[0])
        .stream(chunk_rows, |chunk| {
            assert_eq!(chunk.bytes.as_ptr() as usize % 64, 0, "aligned");
            assert_eq!(chunk.bytes.len(), chunk.rows * shard[0].cols * 2);
            chunks.push((chunk.start, chunk.rows));
            bytes.extend_from_slice(chunk.bytes);
            Ok(true)
        })
        .unwrap();
    (bytes, chunks)
}

#[test]
fn streams_every_row_in_order_for_any_chunk_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = numbered_shard(&dir.path().join("s.npy"), 50, 24);
    let store = context().open(&file_url(dir.path())).unwrap();
    for chunk_rows in [1, 7, 50, 1000] {
        let (bytes, chunks) = stream_all(&store, chunk_rows);
        assert!(
            bytes == data,
            "chunk_rows {chunk_rows}: bytes differ from the file's"
        );
        let expected: Vec<(usize, usize)> = (0..50)
            .step_by(chunk_rows)
            .map(|start| (start, chunk_rows.min(50 - start)))
            .collect();
        assert_eq!(chunks, expected, "chunk_rows {chunk_rows}");
    }
}

#[test]
fn stopping_early_and_consumer_errors_end_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    numbered_shard(&dir.path().join("s.npy"), 100, 8);
    let store = context()
        .open(&Location::Path(dir.path().to_path_buf()))
        .unwrap();
    let shard = store.inspect_shards(&store.list_npy().unwrap()).unwrap();
    let mut calls = 0;
    store
        .reader(&shard[0])
        .stream(10, |_| {
            calls += 1;
            Ok(calls < 2)
        })
        .unwrap();
    assert_eq!(calls, 2);
    let err = store
        .reader(&shard[0])
        .stream(10, |chunk| match chunk.start {
            20 => Err(Error::NonFiniteRow { row: 3 }),
            _ => Ok(true),
        })
        .unwrap_err();
    assert!(matches!(err, Error::NonFiniteRow { row: 3 }), "{err:?}");
}

#[test]
fn a_shard_rewritten_since_inspection_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.npy");
    numbered_shard(&path, 10, 8);
    let store = context().open(&file_url(dir.path())).unwrap();
    let shard = store.inspect_shards(&store.list_npy().unwrap()).unwrap();
    let before = shard[0].object.clone();
    numbered_shard(&path, 11, 8);
    let after = store.head("s.npy").unwrap().unwrap();
    let err = store
        .reader(&shard[0])
        .stream(4, |_| Ok(true))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "file://{}: changed since the run started (its size went from {} to {} bytes, its ETag went from {} to {}; noticed at row 0); rerun to process it as it is now",
            path.display(),
            before.size,
            before.size + 16,
            before.e_tag.unwrap(),
            after.e_tag.unwrap()
        )
    );
    std::fs::remove_file(&path).unwrap();
    let err = store.reader(&shard[0]).stream(4, |_| Ok(true)).unwrap_err();
    assert!(
        err.to_string()
            .contains("(it was deleted; noticed at row 0)"),
        "{err}"
    );
}

#[test]
fn uploads_appear_whole_on_finish_and_never_after_abort() {
    let dir = tempfile::tempdir().unwrap();
    let store = context()
        .open_output(&Location::Path(dir.path().join("out")))
        .unwrap();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut upload = store.upload("a.npy").unwrap();
    for piece in content.chunks(30_000) {
        upload.write_all(piece).unwrap();
    }
    assert_eq!(store.head("a.npy").unwrap(), None);
    assert_eq!(store.list_under("").unwrap(), Vec::new());
    let info = upload.finish().unwrap();
    assert_eq!(
        (info.name.as_str(), info.size),
        ("a.npy", content.len() as u64)
    );
    assert_eq!(store.head("a.npy").unwrap(), Some(info));
    assert_eq!(
        std::fs::read(dir.path().join("out/a.npy")).unwrap(),
        content
    );

    let files = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let mut aborted = store.upload("b.npy").unwrap();
    aborted.write_all(&content).unwrap();
    aborted.abort();
    let mut dropped = store.upload("c.npy").unwrap();
    dropped.write_all(&content).unwrap();
    drop(dropped);
    assert_eq!(store.head("b.npy").unwrap(), None);
    // No staging file left either.
    assert_eq!(
        files(&dir.path().join("out")),
        [dir.path().join("out/a.npy")]
    );
}

#[test]
fn handles_cross_threads() {
    fn send<T: Send>() {}
    send::<Store>();
    send::<ObjectUpload>();
    send::<RemoteShardReader>();
}

#[test]
fn unsupported_schemes_are_named() {
    let err = context()
        .open(&Location::parse("ftp://host/emb/").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("ftp://host/emb/: unsupported storage scheme 'ftp'"),
        "{err}"
    );
    assert!(context()
        .open(&Location::parse("memory:///x").unwrap())
        .is_err());
}

#[cfg(feature = "cloud")]
#[test]
fn unknown_storage_options_are_errors_naming_the_key() {
    let options = vec![("aws_no_such_key".to_string(), "1".to_string())];
    let context = StorageContext::new(options).unwrap();
    let err = context
        .open(&Location::parse("s3://b/x").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "s3://b/x: unknown storage option 'aws_no_such_key' for s3:// URLs"
    );
    // Known keys (any case) build a client without a request.
    let options = vec![
        ("AWS_REGION".to_string(), "eu-west-1".to_string()),
        (
            "aws_endpoint_url".to_string(),
            "http://127.0.0.1:9".to_string(),
        ),
        ("allow_http".to_string(), "true".to_string()),
    ];
    let store = StorageContext::new(options)
        .unwrap()
        .open(&Location::parse("s3://b/emb/").unwrap())
        .unwrap();
    assert_eq!((store.root.as_ref(), store.is_local()), ("emb", false));
    assert_eq!(store.url_of("a.npy"), "s3://b/emb/a.npy");
    let (store, name) = self::context()
        .open_object(&Location::parse("https://example.com/p/q.bin").unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (store.url(), store.root.as_ref(), name.as_str()),
        ("https://example.com/p/", "p", "q.bin")
    );
}

#[cfg(not(feature = "cloud"))]
#[test]
fn cloud_schemes_need_the_cloud_feature() {
    for url in [
        "s3://b/x",
        "gs://b/x/",
        "az://c/x",
        "https://example.com/x/",
    ] {
        let err = context()
            .open(&Location::parse(url).unwrap())
            .err()
            .unwrap()
            .to_string();
        let scheme = url.split("://").next().unwrap();
        assert_eq!(
            err,
            format!("{url}: this build has no object-store support for {scheme}:// (built without the 'cloud' feature)")
        );
    }
}
