//! Scale-out against a real S3 server on loopback (moto, started by `scripts/test-s3.sh`, with
//! `tests/s3/fault_proxy.py` in front of it for injected faults): galleries in a bucket projected
//! by several worker processes, output byte-identical to the local-file run of the same gallery;
//! faults (the server killed mid-upload and restarted, 500s and SlowDown, a connection dropped
//! mid-body, a worker SIGKILLed mid-shard, two workers with the same index) after which no
//! partial object is visible under a final name, `isoclip status` tells the truth, and a rerun
//! completes byte-identical; and the README's Slurm array script and Kubernetes Indexed Job
//! manifest, run as those schedulers run them.
//!
//! Every test here needs the servers, so each is `#[ignore]`d in a plain `cargo test` and fails
//! (never passes silently) when run with `--ignored` without them. The script exports
//! `ISOCLIP_TEST_S3_ENDPOINT` (moto), `ISOCLIP_TEST_S3_PROXY` (the fault proxy; control at
//! `/__faults__`), `ISOCLIP_TEST_MOTO_SERVER` and `ISOCLIP_TEST_PYTHON` (the venv's, for a
//! private server that a test kills, and for reading YAML).
//!
//! Buckets are created per test (unsigned `PUT /bucket`, which moto accepts: object_store
//! cannot create buckets), so tests never see each other's objects.

// The object-store clients exist only with the `cloud` feature (on by default).
#![cfg(feature = "cloud")]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use serde_json::{json, Value};

use common::*;

/// How long any one child process or wait may take before the test gives up (a hang guard,
/// not a timing assertion).
const DEADLINE: Duration = Duration::from_secs(300);

/// The gallery: (rows, dtype) per shard, `part-000.npy` ... in this order. Odd row counts, a
/// one-row shard, f16 and f32 mixed.
const SHARDS: [(usize, &str); 7] = [
    (37, "f16"),
    (64, "f32"),
    (1, "f16"),
    (129, "f32"),
    (50, "f16"),
    (3, "f32"),
    (77, "f16"),
];

/// Dummy credentials (moto accepts any).
const ACCESS_KEY: &str = "isoclip-test";

// ---------------------------------------------------------------------------------------------
// Where the servers are
// ---------------------------------------------------------------------------------------------

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests with scripts/test-s3.sh, which starts the S3 server")
    })
}

/// moto, as started by the script.
fn endpoint() -> String {
    required_env("ISOCLIP_TEST_S3_ENDPOINT")
}

/// The fault proxy in front of the script's moto.
fn proxy() -> FaultProxy {
    FaultProxy {
        base: required_env("ISOCLIP_TEST_S3_PROXY"),
        _child: None,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One unsigned HTTP/1.1 request to `base` (`http://127.0.0.1:PORT`): (status, body).
fn http(base: &str, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(DEADLINE))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {base}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Polls `done` every 50 ms until it holds; panics with `what` after [`DEADLINE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Buckets, through object_store (the client isoclip uses)
// ---------------------------------------------------------------------------------------------

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

/// A bucket of its own for one test, with blocking helpers.
struct Bucket {
    name: String,
    endpoint: String,
    store: AmazonS3,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    /// Creates a new, empty bucket on the server at `endpoint`.
    fn create(endpoint: &str, tag: &str) -> Bucket {
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let name = format!("isoclip-{tag}-{}-{n}", std::process::id());
        let bucket = Bucket::open(endpoint, &name, RetryConfig::default());
        bucket.create_on_server();
        bucket
    }

    fn open(endpoint: &str, name: &str, retry: RetryConfig) -> Bucket {
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(name)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(ACCESS_KEY)
            .with_retry(retry)
            .build()
            .unwrap();
        Bucket {
            name: name.to_string(),
            endpoint: endpoint.to_string(),
            store,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// CreateBucket (again, after a server restart).
    fn create_on_server(&self) {
        let (status, body) = http(&self.endpoint, "PUT", &format!("/{}", self.name), b"").unwrap();
        assert_eq!(status, 200, "creating bucket {}: {body}", self.name);
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        self.runtime
            .block_on(
                self.store
                    .put(&ObjectPath::from(key), PutPayload::from(bytes)),
            )
            .unwrap_or_else(|e| panic!("PUT {}: {e}", self.url(key)));
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            match self.store.get(&ObjectPath::from(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {}: {e}", self.url(key)),
            }
        })
    }

    /// Every object under `prefix` (recursive): key -> size.
    fn list(&self, prefix: &str) -> BTreeMap<String, u64> {
        self.runtime
            .block_on(
                self.store
                    .list(Some(&ObjectPath::from(prefix)))
                    .map_ok(|m| (m.location.to_string(), m.size))
                    .try_collect(),
            )
            .unwrap_or_else(|e| panic!("LIST {}: {e}", self.url(prefix)))
    }

    /// Every object under `prefix` with its bytes.
    fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        self.list(prefix)
            .into_keys()
            .map(|k| {
                let bytes = self.get(&k).expect("listed object");
                (k, bytes)
            })
            .collect()
    }

    /// The `.npy` objects directly under `out/` (the outputs visible under their final names):
    /// shard name -> bytes.
    fn outputs(&self) -> BTreeMap<String, Vec<u8>> {
        self.objects("out/")
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("out/")?;
                (!name.contains('/') && name.ends_with(".npy")).then(|| (name.to_string(), v))
            })
            .collect()
    }

    /// Multipart uploads started and neither completed nor aborted (ListMultipartUploads).
    fn uploads_in_progress(&self) -> usize {
        let (status, body) = http(
            &self.endpoint,
            "GET",
            &format!("/{}?uploads", self.name),
            b"",
        )
        .unwrap();
        assert_eq!(status, 200, "ListMultipartUploads: {body}");
        body.matches("<Upload>").count()
    }
}

// ---------------------------------------------------------------------------------------------
// The fault proxy and private servers
// ---------------------------------------------------------------------------------------------

/// tests/s3/fault_proxy.py: rules through its control endpoint.
struct FaultProxy {
    base: String,
    _child: Option<ChildGuard>,
}

impl FaultProxy {
    /// A proxy of this test's own in front of `upstream_port`.
    fn start(upstream_port: u16) -> FaultProxy {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/fault_proxy.py");
        let child = Command::new(required_env("ISOCLIP_TEST_PYTHON"))
            .arg(script)
            .args(["--upstream", &format!("127.0.0.1:{upstream_port}")])
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let guard = ChildGuard(child);
        wait_until("the fault proxy's port file", || port_file.exists());
        let port = std::fs::read_to_string(&port_file).unwrap();
        let proxy = FaultProxy {
            base: format!("http://127.0.0.1:{}", port.trim()),
            _child: Some(guard),
        };
        wait_until("the fault proxy", || {
            http(&proxy.base, "GET", "/__faults__", b"").is_ok()
        });
        proxy
    }

    fn endpoint(&self) -> &str {
        &self.base
    }

    fn control(&self, method: &str, body: &[u8]) -> Value {
        let (status, text) = http(&self.base, method, "/__faults__", body).unwrap();
        assert_eq!(status, 200, "fault proxy: {text}");
        serde_json::from_str(&text).unwrap()
    }

    fn add(&self, rule: Value) {
        self.control("POST", rule.to_string().as_bytes());
    }

    /// Removes every rule and releases the held requests.
    fn clear(&self) {
        self.control("DELETE", b"");
    }

    /// The rules with their hit counts.
    fn rules(&self) -> Vec<Value> {
        self.control("GET", b"")["rules"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn wait_held(&self, n: u64) {
        wait_until(&format!("{n} request(s) held by the fault proxy"), || {
            self.control("GET", b"")["held"].as_u64().unwrap() >= n
        });
    }
}

/// Kills its process when dropped (a test that fails never leaves a server behind).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A moto of this test's own, which it may kill and restart on the same port.
struct PrivateMoto {
    port: u16,
    child: Option<ChildGuard>,
}

impl PrivateMoto {
    fn start() -> PrivateMoto {
        let mut moto = PrivateMoto {
            port: free_port(),
            child: None,
        };
        moto.restart();
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again): it comes back empty, as moto keeps no state.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "moto is already running");
        let child = Command::new(required_env("ISOCLIP_TEST_MOTO_SERVER"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(ChildGuard(child));
        let endpoint = self.endpoint();
        wait_until("the private moto server", || {
            http(&endpoint, "GET", "/", b"").is_ok()
        });
    }

    /// SIGKILL: the server vanishes mid-request, with everything it held.
    fn kill(&mut self) {
        drop(self.child.take());
    }
}

// ---------------------------------------------------------------------------------------------
// The gallery, the local reference run, isoclip runs
// ---------------------------------------------------------------------------------------------

/// A work directory: the synthetic projector `p.st`, the gallery `g/part-00k.npy` (see
/// [`SHARDS`]) and `ref/`, the local-file run of it (the reference every S3 run must equal).
struct Gallery {
    dir: tempfile::TempDir,
    reference: BTreeMap<String, Vec<u8>>,
}

impl Gallery {
    fn new() -> Gallery {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fit_projector(d);
        std::fs::create_dir(d.join("g")).unwrap();
        for (i, (rows, dtype)) in SHARDS.iter().enumerate() {
            let tmp = format!("tmp{i}");
            let o = isoclip(
                &[
                    "gallery",
                    "--out",
                    &tmp,
                    "--shards",
                    "1",
                    "--rows",
                    &rows.to_string(),
                    "--dtype",
                    dtype,
                    "--seed",
                    &(i + 1).to_string(),
                ],
                d,
            );
            assert!(o.status.success(), "{}", stderr(&o));
            let made: Vec<PathBuf> = std::fs::read_dir(d.join(&tmp))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(made.len(), 1, "{made:?}");
            std::fs::rename(&made[0], d.join("g").join(shard_name(i))).unwrap();
        }
        let o = common::project(d, "g", "ref", &["--device", "cpu"]);
        assert!(o.status.success(), "local reference run: {}", stderr(&o));
        let reference: BTreeMap<String, Vec<u8>> = (0..SHARDS.len())
            .map(|i| {
                let name = shard_name(i);
                let bytes = std::fs::read(d.join("ref").join(&name)).unwrap();
                (name, bytes)
            })
            .collect();
        Gallery { dir, reference }
    }

    /// Uploads the projector (`p.st`) and the gallery (`gallery/part-00k.npy`).
    fn upload(&self, bucket: &Bucket) {
        let d = self.dir.path();
        bucket.put("p.st", std::fs::read(d.join("p.st")).unwrap());
        for i in 0..SHARDS.len() {
            let name = shard_name(i);
            bucket.put(
                &format!("gallery/{name}"),
                std::fs::read(d.join("g").join(&name)).unwrap(),
            );
        }
    }

    fn total_rows(&self) -> u64 {
        SHARDS.iter().map(|(rows, _)| *rows as u64).sum()
    }

    fn total_output_bytes(&self) -> u64 {
        self.reference.values().map(|b| b.len() as u64).sum()
    }
}

fn shard_name(i: usize) -> String {
    format!("part-{i:03}.npy")
}

/// The shards worker `index` of `count` takes (k mod count == index).
fn shards_of(index: usize, count: usize) -> Vec<String> {
    (0..SHARDS.len())
        .filter(|k| k % count == index)
        .map(shard_name)
        .collect()
}

/// A command with the S3 environment for `endpoint` and none of the schedulers' variables
/// (the test itself may run inside a Slurm job).
fn isoclip_cmd(endpoint: &str) -> Command {
    let mut c = isoclip_command();
    s3_env(&mut c, endpoint);
    c
}

/// The S3 environment for `endpoint`, without the schedulers' variables (for any command that
/// runs isoclip: the binary, a job script, `sbatch`).
fn s3_env(c: &mut Command, endpoint: &str) {
    for var in SCHEDULER_VARIABLES {
        c.env_remove(var);
    }
    c.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", ACCESS_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// `isoclip project` of the bucket's gallery into its `out/`, on the CPU, quiet.
fn project(endpoint: &str, bucket: &Bucket, extra: &[&str]) -> Command {
    let mut c = isoclip_cmd(endpoint);
    c.args(["project", "--projector", &bucket.url("p.st")])
        .args(["--input", &bucket.url("gallery/")])
        .args(["--output", &bucket.url("out/")])
        .args(["--device", "cpu", "--quiet"])
        .args(extra);
    c
}

/// Starts `c` with its output captured.
fn spawn(c: &mut Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` (killing it after [`DEADLINE`]).
fn finish(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{what} did not finish within {DEADLINE:?}");
        }
    }
}

fn run(c: &mut Command, what: &str) -> Output {
    finish(spawn(c), what)
}

fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstderr: {}",
        o.status.code(),
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{what}: {}", stderr(o));
}

/// The `--json` summary's count of shards processed (not skipped).
fn processed(o: &Output) -> u64 {
    let v: Value = serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("--json summary: {e}: {}", stdout(o)));
    v["shards_processed"].as_u64().expect("shards_processed")
}

/// `isoclip status --output s3://bucket/out/ --json`: (exit code, report).
fn status(endpoint: &str, bucket: &Bucket) -> (Option<i32>, Value) {
    let o = run(
        isoclip_cmd(endpoint).args(["status", "--output", &bucket.url("out/"), "--json"]),
        "isoclip status",
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let report = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}\nstdout: {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        )
    });
    (o.status.code(), report)
}

/// The state `status` gives each shard: name -> "done" | "missing" | "stale".
fn states(report: &Value) -> BTreeMap<String, String> {
    report["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every output is there, byte-identical to the local run, and `status` says all done.
fn assert_complete(endpoint: &str, bucket: &Bucket, g: &Gallery) {
    let outputs = bucket.outputs();
    assert_eq!(
        outputs.keys().collect::<Vec<_>>(),
        g.reference.keys().collect::<Vec<_>>(),
        "the outputs visible in {}",
        bucket.url("out/")
    );
    for (name, bytes) in &outputs {
        assert!(
            *bytes == g.reference[name],
            "{} differs from the local-file run",
            bucket.url(&format!("out/{name}"))
        );
    }
    let (code, report) = status(endpoint, bucket);
    assert_eq!(code, Some(0), "status: {report}");
    assert_eq!(report["shards_total"], json!(SHARDS.len()), "{report}");
    assert_eq!(report["done"], json!(SHARDS.len()), "{report}");
    assert_eq!(report["missing"], json!(0), "{report}");
    assert_eq!(report["stale"], json!(0), "{report}");
    assert_eq!(report["rows_done"], json!(g.total_rows()), "{report}");
    assert_eq!(
        report["bytes_done"],
        json!(g.total_output_bytes()),
        "{report}"
    );
    assert!(states(&report).values().all(|s| s == "done"), "{report}");
}

/// No partial object under a final name: every `out/*.npy` visible equals the clean output.
fn assert_no_partial_output(bucket: &Bucket, g: &Gallery) {
    for (name, bytes) in bucket.outputs() {
        let reference = g
            .reference
            .get(&name)
            .unwrap_or_else(|| panic!("unexpected object out/{name}"));
        assert!(
            bytes == *reference,
            "{} is visible but not the complete output ({} bytes of {})",
            bucket.url(&format!("out/{name}")),
            bytes.len(),
            reference.len()
        );
    }
}

/// `status` exits 3 and names exactly `missing` as missing, every other shard done.
fn assert_status_missing(endpoint: &str, bucket: &Bucket, missing: &[String]) {
    let (code, report) = status(endpoint, bucket);
    assert_eq!(code, Some(3), "status: {report}");
    assert_eq!(report["shards_total"], json!(SHARDS.len()), "{report}");
    assert_eq!(report["missing"], json!(missing.len()), "{report}");
    assert_eq!(report["stale"], json!(0), "{report}");
    assert_eq!(
        report["done"],
        json!(SHARDS.len() - missing.len()),
        "{report}"
    );
    let expected: BTreeMap<String, String> = (0..SHARDS.len())
        .map(shard_name)
        .map(|n| {
            let state = if missing.contains(&n) {
                "missing"
            } else {
                "done"
            };
            (n, state.to_string())
        })
        .collect();
    assert_eq!(states(&report), expected, "{report}");
}

/// A proxy rule that holds every request of an output upload already started (part uploads
/// and completions carry `uploadId=`), so no output can become visible while it is in place.
fn hold_output_uploads(bucket: &Bucket) -> Value {
    json!({
        "action": "hold",
        "count": -1,
        "path_contains": [format!("/{}/out/", bucket.name), "uploadId="],
    })
}

// ---------------------------------------------------------------------------------------------
// The test bed itself: object_store against moto, through the proxy
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn object_store_puts_lists_multipart_uploads_and_create_only_puts_on_the_server() {
    let bucket = Bucket::create(&endpoint(), "bed");
    bucket.put("g/b.npy", b"second".to_vec());
    bucket.put("g/a.npy", b"first".to_vec());
    bucket.put("g/sub/c.npy", b"nested".to_vec());
    let big: Vec<u8> = (0..(11u32 << 20) + 12345)
        .map(|i| (i % 251) as u8)
        .collect();
    bucket.runtime.block_on(async {
        let upload = bucket
            .store
            .put_multipart(&ObjectPath::from("g/big.bin"))
            .await
            .unwrap();
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 << 20);
        writer.write(&big);
        writer.finish().await.unwrap();
    });
    assert_eq!(
        bucket.list("g/"),
        BTreeMap::from([
            ("g/a.npy".to_string(), 5),
            ("g/b.npy".to_string(), 6),
            ("g/big.bin".to_string(), big.len() as u64),
            ("g/sub/c.npy".to_string(), 6),
        ])
    );
    assert!(bucket.get("g/big.bin").unwrap() == big);
    assert_eq!(bucket.uploads_in_progress(), 0);

    // What completion records rely on: a create-only PUT never replaces an object.
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let again = bucket.runtime.block_on(bucket.store.put_opts(
        &ObjectPath::from("g/a.npy"),
        PutPayload::from_static(b"replaced"),
        create.clone(),
    ));
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(bucket.get("g/a.npy").unwrap(), b"first");
    bucket
        .runtime
        .block_on(bucket.store.put_opts(
            &ObjectPath::from("g/new.json"),
            PutPayload::from_static(b"{}"),
            create,
        ))
        .unwrap();
    assert_eq!(bucket.get("g/new.json").unwrap(), b"{}");
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn the_fault_proxy_forwards_exactly_and_injects_errors_drops_and_holds() {
    let proxy = proxy();
    proxy.clear();
    let direct = Bucket::create(&endpoint(), "proxy");
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let via = Bucket::open(proxy.endpoint(), &direct.name, retry);

    // Forwarded byte for byte, signatures included, both ways.
    let body: Vec<u8> = (0..(6u32 << 20)).map(|i| (i * 7 % 256) as u8).collect();
    via.put("x/one", body.clone());
    assert!(direct.get("x/one").unwrap() == body);
    assert!(via.get("x/one").unwrap() == body);

    // 503 SlowDown, three times: object_store's retries get through, and the faults were hit.
    let prefix = format!("/{}/x/", direct.name);
    proxy.add(
        json!({"status": 503, "code": "SlowDown", "count": 3, "method": "PUT",
                     "path_contains": prefix}),
    );
    via.put("x/two", b"two".to_vec());
    assert_eq!(direct.get("x/two").unwrap(), b"two");
    assert_eq!(proxy.rules()[0]["hits"], json!(3));
    proxy.clear();

    // 500 on every GET: the first try and 3 retries, then an error.
    proxy.add(json!({"status": 500, "count": -1, "method": "GET", "path_contains": prefix}));
    let err = via
        .runtime
        .block_on(via.store.get(&ObjectPath::from("x/two")))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("500"), "{err}");
    assert_eq!(proxy.rules()[0]["hits"], json!(4));
    proxy.clear();

    // A connection dropped mid-body never leaves a partial object.
    proxy.add(
        json!({"action": "drop", "after_bytes": 1000, "method": "PUT",
                     "path_contains": prefix}),
    );
    let outcome = via.runtime.block_on(
        via.store
            .put(&ObjectPath::from("x/three"), PutPayload::from(body.clone())),
    );
    assert_eq!(proxy.rules()[0]["hits"], json!(1));
    match direct.get("x/three") {
        Some(b) => assert!(outcome.is_ok() && b == body, "partial object: {outcome:?}"),
        None => assert!(outcome.is_err()),
    }
    proxy.clear();

    // A held request reaches the server only when released.
    proxy.add(json!({"action": "hold", "count": -1, "method": "PUT", "path_contains": prefix}));
    let name = direct.name.clone();
    let endpoint = proxy.endpoint().to_string();
    let writer = std::thread::spawn(move || {
        Bucket::open(&endpoint, &name, RetryConfig::default()).put("x/held", b"held".to_vec());
    });
    proxy.wait_held(1);
    assert_eq!(direct.get("x/held"), None);
    proxy.clear();
    writer.join().unwrap();
    assert_eq!(direct.get("x/held").unwrap(), b"held");
}

// ---------------------------------------------------------------------------------------------
// The engine on S3
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn three_workers_on_s3_write_byte_identical_outputs_to_the_local_run() {
    let g = Gallery::new();
    let ep = endpoint();
    let bucket = Bucket::create(&ep, "e2e");
    g.upload(&bucket);
    let workers: Vec<Child> = (0..3)
        .map(|i| {
            spawn(&mut project(
                &ep,
                &bucket,
                &[
                    "--num-shards",
                    "3",
                    "--shard-index",
                    &i.to_string(),
                    "--json",
                ],
            ))
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        let o = finish(w, &format!("worker {i}"));
        assert_success(&o, &format!("worker {i}"));
        assert_eq!(processed(&o), shards_of(i, 3).len() as u64, "worker {i}");
    }
    assert_complete(&ep, &bucket, &g);
    assert!(bucket.get("out/_isoclip/job.json").is_some());
    let records: Vec<String> = bucket.list("out/_isoclip/records/").into_keys().collect();
    let expected: Vec<String> = (0..SHARDS.len())
        .map(|i| format!("out/_isoclip/records/{}.json", shard_name(i)))
        .collect();
    assert_eq!(records, expected);
    assert_eq!(bucket.uploads_in_progress(), 0);

    // A rerun anywhere skips every shard.
    let o = run(&mut project(&ep, &bucket, &["--json"]), "rerun");
    assert_success(&o, "rerun");
    assert_eq!(processed(&o), 0);
    assert_complete(&ep, &bucket, &g);
}

/// `isoclip eval` with its projector, features and labels in the bucket gives exactly the
/// numbers of the same files on disk; an object that is not there is an error naming its URL.
#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn eval_reads_its_data_files_from_the_bucket_like_local_files() {
    let g = Gallery::new();
    let ep = endpoint();
    let bucket = Bucket::create(&ep, "eval");
    g.upload(&bucket);
    let d = g.dir.path();
    // Labels for the 129-row shard: 6 classes.
    let shard = shard_name(3);
    let rows = SHARDS[3].0;
    let labels: Vec<u8> = (0..rows)
        .flat_map(|i| ((i % 6) as i64).to_le_bytes())
        .collect();
    write_npy_raw(&d.join("y.npy"), "<i8", &[rows], false, &labels);
    bucket.put("y.npy", std::fs::read(d.join("y.npy")).unwrap());
    let eval = |projector: &str, features: &str, labels: &str| {
        let mut c = isoclip_cmd(&ep);
        c.current_dir(d).args([
            "eval",
            "--projector",
            projector,
            "--features",
            features,
            "--labels",
            labels,
            "--json",
        ]);
        run(&mut c, "eval")
    };
    let local = eval("p.st", &format!("g/{shard}"), "y.npy");
    assert_success(&local, "local eval");
    let remote = eval(
        &bucket.url("p.st"),
        &bucket.url(&format!("gallery/{shard}")),
        &bucket.url("y.npy"),
    );
    assert_success(&remote, "eval from the bucket");
    let (local, remote): (Value, Value) = (
        serde_json::from_slice(&local.stdout).unwrap(),
        serde_json::from_slice(&remote.stdout).unwrap(),
    );
    for side in ["clip", "isoclip", "delta"] {
        assert_eq!(local[side], remote[side], "{side}");
    }
    let missing = bucket.url("nope.npy");
    let o = eval(&bucket.url("p.st"), &missing, &bucket.url("y.npy"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&missing), "{}", stderr(&o));
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn the_server_killed_mid_upload_and_restarted_fails_cleanly_and_a_rerun_completes() {
    let g = Gallery::new();
    let mut moto = PrivateMoto::start();
    let proxy = FaultProxy::start(moto.port);
    let bucket = Bucket::create(&moto.endpoint(), "restart");
    g.upload(&bucket);

    proxy.add(hold_output_uploads(&bucket));
    let worker = spawn(&mut project(proxy.endpoint(), &bucket, &[]));
    proxy.wait_held(1);
    // What the store held when it went down; a durable store comes back with it.
    let durable = bucket.objects("");
    moto.kill();
    moto.restart();
    bucket.create_on_server();
    for (key, bytes) in durable {
        bucket.put(&key, bytes);
    }
    proxy.clear();
    let o = finish(worker, "the interrupted run");
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(&bucket.url("out/part-")),
        "the error names no output URL: {err}"
    );

    assert_no_partial_output(&bucket, &g);
    let all: Vec<String> = (0..SHARDS.len()).map(shard_name).collect();
    assert_status_missing(&moto.endpoint(), &bucket, &all);

    let o = run(&mut project(&moto.endpoint(), &bucket, &[]), "the rerun");
    assert_success(&o, "the rerun");
    assert_complete(&moto.endpoint(), &bucket, &g);
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn injected_500s_and_slowdowns_are_retried_to_identical_outputs() {
    let g = Gallery::new();
    let proxy = proxy();
    proxy.clear();
    let bucket = Bucket::create(&endpoint(), "retries");
    g.upload(&bucket);
    let out = format!("/{}/out/", bucket.name);
    let gallery = format!("/{}/gallery/", bucket.name);
    let rules = [
        json!({"status": 503, "code": "SlowDown", "count": 4, "method": "PUT", "path_contains": out}),
        json!({"status": 500, "count": 2, "method": "POST", "path_contains": out}),
        json!({"status": 500, "count": 3, "method": "GET", "path_contains": gallery}),
        json!({"status": 503, "code": "SlowDown", "count": 2, "method": "GET", "path_contains": gallery}),
    ];
    for rule in &rules {
        proxy.add(rule.clone());
    }
    let o = run(&mut project(proxy.endpoint(), &bucket, &[]), "the run");
    let hits: Vec<Value> = proxy.rules().iter().map(|r| r["hits"].clone()).collect();
    proxy.clear();
    assert_success(&o, "the run through injected faults");
    let injected: Vec<Value> = rules.iter().map(|r| r["count"].clone()).collect();
    assert_eq!(hits, injected, "every injected fault was met");
    assert_complete(&endpoint(), &bucket, &g);
    assert_eq!(bucket.uploads_in_progress(), 0);
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn a_connection_dropped_mid_part_is_retried_or_fails_cleanly_and_a_rerun_completes() {
    let g = Gallery::new();
    let proxy = proxy();
    proxy.clear();
    let bucket = Bucket::create(&endpoint(), "drop");
    g.upload(&bucket);
    proxy.add(
        json!({"action": "drop", "after_bytes": 100, "method": "PUT",
                     "path_contains": [format!("/{}/out/", bucket.name), "partNumber="]}),
    );
    let o = run(&mut project(proxy.endpoint(), &bucket, &[]), "the run");
    let hits = proxy.rules()[0]["hits"].clone();
    proxy.clear();
    assert_eq!(hits, json!(1), "the drop was met");
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    if !o.status.success() {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&bucket.url("out/part-")),
            "{}",
            stderr(&o)
        );
        assert_no_partial_output(&bucket, &g);
        assert_eq!(
            bucket.uploads_in_progress(),
            0,
            "the failed upload is aborted"
        );
        let rerun = run(&mut project(&endpoint(), &bucket, &[]), "the rerun");
        assert_success(&rerun, "the rerun");
    }
    assert_complete(&endpoint(), &bucket, &g);
    assert_eq!(bucket.uploads_in_progress(), 0);
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn a_worker_sigkilled_mid_shard_leaves_no_partial_object_and_its_rerun_completes() {
    let g = Gallery::new();
    let ep = endpoint();
    let proxy = proxy();
    proxy.clear();
    let bucket = Bucket::create(&ep, "sigkill");
    g.upload(&bucket);
    for i in [1, 2] {
        let o = run(
            &mut project(
                &ep,
                &bucket,
                &["--num-shards", "3", "--shard-index", &i.to_string()],
            ),
            "workers 1 and 2",
        );
        assert_success(&o, &format!("worker {i}"));
    }
    let worker0 = ["--num-shards", "3", "--shard-index", "0"];
    proxy.add(hold_output_uploads(&bucket));
    let mut worker = spawn(&mut project(proxy.endpoint(), &bucket, &worker0));
    proxy.wait_held(1);
    worker.kill().unwrap(); // SIGKILL
    let o = finish(worker, "the killed worker");
    proxy.clear();
    assert_eq!(o.status.code(), None, "killed by a signal");

    assert_no_partial_output(&bucket, &g);
    assert_status_missing(&ep, &bucket, &shards_of(0, 3));

    let o = run(
        &mut project(&ep, &bucket, &worker0),
        "the rerun of worker 0",
    );
    assert_success(&o, "the rerun of worker 0");
    assert_complete(&ep, &bucket, &g);
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn two_workers_with_the_same_index_at_once_both_succeed_with_identical_outputs() {
    let g = Gallery::new();
    let ep = endpoint();
    let bucket = Bucket::create(&ep, "twins");
    g.upload(&bucket);
    let same = ["--num-shards", "2", "--shard-index", "1"];
    let twins: Vec<Child> = (0..2)
        .map(|_| spawn(&mut project(&ep, &bucket, &same)))
        .collect();
    for (i, t) in twins.into_iter().enumerate() {
        assert_success(&finish(t, "a twin"), &format!("twin {i}"));
    }
    assert_no_partial_output(&bucket, &g);
    assert_status_missing(&ep, &bucket, &shards_of(0, 2));
    let o = run(
        &mut project(&ep, &bucket, &["--num-shards", "2", "--shard-index", "0"]),
        "worker 0",
    );
    assert_success(&o, "worker 0");
    assert_complete(&ep, &bucket, &g);
}

// ---------------------------------------------------------------------------------------------
// The README's array jobs, run as Slurm and Kubernetes run them
// ---------------------------------------------------------------------------------------------

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The task ids of the script's `#SBATCH --array=A-B` line.
fn slurm_array_ids(script: &str) -> Vec<usize> {
    let range = script
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .expect("an #SBATCH --array line");
    let (a, b) = range.trim().split_once('-').expect("a range A-B");
    (a.parse().unwrap()..=b.parse().unwrap()).collect()
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn the_slurm_array_example_run_as_slurm_runs_it_matches_the_local_run() {
    let g = Gallery::new();
    let ep = endpoint();
    let bucket = Bucket::create(&ep, "slurm");
    g.upload(&bucket);
    let script = example("examples/slurm/project-array.sh");
    let ids = slurm_array_ids(&std::fs::read_to_string(&script).unwrap());
    assert_eq!(ids, [0, 1, 2]);
    let tasks: Vec<Child> = ids
        .iter()
        .map(|id| {
            let mut c = Command::new("bash");
            s3_env(&mut c, &ep);
            c.arg(&script)
                .env("SLURM_ARRAY_JOB_ID", "4242")
                .env("SLURM_JOB_ID", (4243 + id).to_string())
                .env("SLURM_ARRAY_TASK_ID", id.to_string())
                .env("SLURM_ARRAY_TASK_MIN", ids[0].to_string())
                .env("SLURM_ARRAY_TASK_MAX", ids[ids.len() - 1].to_string())
                .env("SLURM_ARRAY_TASK_COUNT", ids.len().to_string())
                .env("SLURM_ARRAY_TASK_STEP", "1")
                .env("PROJECTOR", bucket.url("p.st"))
                .env("GALLERY", bucket.url("gallery/"))
                .env("OUTPUT", bucket.url("out/"))
                .env("ISOCLIP", env!("CARGO_BIN_EXE_isoclip"));
            spawn(&mut c)
        })
        .collect();
    for (id, t) in ids.iter().zip(tasks) {
        assert_success(&finish(t, "an array task"), &format!("array task {id}"));
    }
    assert_complete(&ep, &bucket, &g);
}

/// Submitted for real: `sbatch --wait` of the unchanged script to the single-node cluster that
/// `scripts/test-s3.sh` starts (unless ISOCLIP_TEST_SLURM=0, which skips this test).
/// Only the site-specific sizes are overridden on the command line, as a user would on a
/// smaller machine: this node has 2 CPUs and no 16 GB to give.
#[test]
#[ignore = "needs the S3 server and the Slurm cluster started by scripts/test-s3.sh"]
fn the_slurm_array_example_submitted_to_a_real_slurm_cluster_matches_the_local_run() {
    let slurm_conf = required_env("ISOCLIP_TEST_SLURM_CONF");
    let g = Gallery::new();
    let ep = endpoint();
    let bucket = Bucket::create(&ep, "sbatch");
    g.upload(&bucket);
    let logs = tempfile::tempdir().unwrap();
    let mut sbatch = Command::new("sbatch");
    s3_env(&mut sbatch, &ep);
    sbatch
        .env("SLURM_CONF", &slurm_conf)
        .args(["--wait", "--cpus-per-task=1", "--mem=256M"])
        .arg(format!("--output={}/task-%a.log", logs.path().display()))
        .arg(example("examples/slurm/project-array.sh"))
        .env("PROJECTOR", bucket.url("p.st"))
        .env("GALLERY", bucket.url("gallery/"))
        .env("OUTPUT", bucket.url("out/"))
        .env("ISOCLIP", env!("CARGO_BIN_EXE_isoclip"));
    let o = run(&mut sbatch, "sbatch --wait");
    let task_logs: String = (0..3)
        .map(|i| std::fs::read_to_string(logs.path().join(format!("task-{i}.log"))))
        .map(|r| r.unwrap_or_else(|e| format!("(no log: {e})\n")))
        .collect();
    assert_success(&o, &format!("the array job; task logs:\n{task_logs}"));
    assert_complete(&ep, &bucket, &g);
}

/// Kubernetes' `$(VAR)` expansion of a container's command and args from its env (`$$` is a
/// literal `$`; a reference to an undefined variable stays as written).
fn expand_k8s(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[test]
#[ignore = "needs the S3 server started by scripts/test-s3.sh"]
fn the_kubernetes_indexed_job_example_run_as_kubernetes_runs_it_matches_the_local_run() {
    let g = Gallery::new();
    let ep = endpoint();
    let bucket = Bucket::create(&ep, "k8s");
    g.upload(&bucket);
    let manifest = example("examples/kubernetes/project-indexed-job.yaml");
    let o = Command::new(required_env("ISOCLIP_TEST_PYTHON"))
        .arg(example("tests/s3/k8s_container.py"))
        .arg(&manifest)
        .output()
        .unwrap();
    assert_success(&o, "k8s_container.py");
    let pod: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(pod["completion_mode"], json!("Indexed"));
    let completions = pod["completions"].as_u64().unwrap() as usize;
    let mut env: BTreeMap<String, String> = serde_json::from_value(pod["env"].clone()).unwrap();
    assert_eq!(env["ISOCLIP_NUM_SHARDS"], completions.to_string());
    // The names a user changes: the three locations.
    for (name, value) in [
        ("PROJECTOR", bucket.url("p.st")),
        ("GALLERY", bucket.url("gallery/")),
        ("OUTPUT", bucket.url("out/")),
    ] {
        assert!(env.contains_key(name), "the manifest sets no {name}");
        env.insert(name.to_string(), value);
    }
    let mut argv: Vec<String> = serde_json::from_value::<Vec<String>>(pod["command"].clone())
        .unwrap()
        .into_iter()
        .chain(serde_json::from_value::<Vec<String>>(pod["args"].clone()).unwrap())
        .map(|a| expand_k8s(&a, &env))
        .collect();
    // The image's isoclip is this build's.
    assert_eq!(argv[0], "isoclip");
    argv[0] = env!("CARGO_BIN_EXE_isoclip").to_string();
    let pods: Vec<Child> = (0..completions)
        .map(|index| {
            let mut c = Command::new(&argv[0]);
            s3_env(&mut c, &ep);
            c.args(&argv[1..])
                .envs(&env)
                .env("JOB_COMPLETION_INDEX", index.to_string());
            spawn(&mut c)
        })
        .collect();
    for (index, p) in pods.into_iter().enumerate() {
        assert_success(&finish(p, "a pod"), &format!("pod of index {index}"));
    }
    assert_complete(&ep, &bucket, &g);
}

#[test]
fn kubernetes_variable_expansion_follows_the_kubernetes_rules() {
    let env = BTreeMap::from([("A".to_string(), "s3://b/x/".to_string())]);
    assert_eq!(expand_k8s("$(A)", &env), "s3://b/x/");
    assert_eq!(expand_k8s("--in=$(A)y", &env), "--in=s3://b/x/y");
    assert_eq!(expand_k8s("$$(A)", &env), "$(A)");
    assert_eq!(expand_k8s("$(B)", &env), "$(B)");
    assert_eq!(expand_k8s("cost $5", &env), "cost $5");
}

#[test]
fn the_examples_agree_on_the_number_of_workers() {
    let script = std::fs::read_to_string(example("examples/slurm/project-array.sh")).unwrap();
    assert_eq!(slurm_array_ids(&script), [0, 1, 2]);
    let manifest =
        std::fs::read_to_string(example("examples/kubernetes/project-indexed-job.yaml")).unwrap();
    let completions = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("completions:"))
        .expect("completions")
        .trim()
        .to_string();
    let num_shards = manifest
        .lines()
        .skip_while(|l| !l.contains("name: ISOCLIP_NUM_SHARDS"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("value:"))
        .expect("ISOCLIP_NUM_SHARDS's value")
        .trim()
        .trim_matches('"')
        .to_string();
    assert_eq!(
        completions, num_shards,
        "ISOCLIP_NUM_SHARDS must equal completions"
    );
}
