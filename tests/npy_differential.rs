//! Differential test of the `.npy` header parser against numpy itself.
//!
//! `tests/reference/npy_differential.py` writes a few hundred `.npy` files (what numpy writes for
//! every dtype and order, plus hostile headers: duplicate/unknown/missing keys, odd spacing and
//! quoting, versions 1-3, unsupported dtypes, bad shapes, trailing garbage, truncation) and
//! records numpy's verdict (`np.load(mmap_mode='r')`). isoclip must agree with numpy on every
//! file it accepts (same shape, dtype and order) and must refuse every file numpy refuses; it may
//! refuse more (dtypes it does not read). Skipped, with the reason printed, when python3 or numpy
//! is missing, unless `ISOCLIP_REQUIRE_NUMPY=1` (set by `scripts/test-npy-numpy.sh`, which
//! installs numpy first).

use std::path::Path;
use std::process::Command;

use isoclip::formats::npy::parse_header;

/// isoclip's verdict: the header parses, the dtype is one we read, and the file holds the data.
fn isoclip_accepts(path: &Path) -> Option<isoclip::formats::npy::NpyHeader> {
    let bytes = std::fs::read(path).unwrap();
    let h = parse_header(&bytes, path).ok()?;
    h.dtype?;
    (bytes.len() >= h.data_end()?).then_some(h)
}

#[test]
fn header_parser_never_disagrees_with_numpy() {
    let required = std::env::var("ISOCLIP_REQUIRE_NUMPY").as_deref() == Ok("1");
    let probe = Command::new("python3")
        .args(["-c", "import numpy"])
        .output();
    match probe {
        Err(e) if !required => {
            println!("SKIPPED: python3 is not available ({e})");
            return;
        }
        Ok(o) if !o.status.success() && !required => {
            println!("SKIPPED: numpy is not installed (scripts/test-npy-numpy.sh installs it)");
            return;
        }
        _ => {}
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/npy_differential.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("verdicts.json")).unwrap()).unwrap();
    assert!(verdicts.len() >= 300, "only {} cases", verdicts.len());
    let (mut both, mut only_numpy, mut neither) = (0, 0, 0);
    let mut differences = Vec::new();
    for v in &verdicts {
        let file = Path::new(v["file"].as_str().unwrap());
        let numpy_ok = v["ok"].as_bool().unwrap();
        match (numpy_ok, isoclip_accepts(file)) {
            (false, None) => neither += 1,
            (true, None) => {
                only_numpy += 1;
                // What np.save writes, in a dtype we read, must be read.
                let ours = [
                    "<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8",
                    "|b1",
                ];
                if v["written_by_numpy"] == true && ours.contains(&v["dtype"].as_str().unwrap()) {
                    differences.push(format!("{}: isoclip refuses {v}", file.display()));
                }
            }
            (false, Some(h)) => differences.push(format!(
                "{}: isoclip accepts {:?} {:?} but numpy refuses: {}",
                file.display(),
                h.descr,
                h.shape,
                v["error"]
            )),
            (true, Some(h)) => {
                both += 1;
                let shape: Vec<usize> = v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let dtype = h.dtype.unwrap().descr();
                let fortran_agrees = v["fortran"].as_bool().is_none_or(|f| f == h.fortran_order);
                if shape != h.shape || dtype != v["dtype"].as_str().unwrap() || !fortran_agrees {
                    differences.push(format!(
                        "{}: numpy reads {v}, isoclip reads {dtype} {:?} fortran={}",
                        file.display(),
                        h.shape,
                        h.fortran_order
                    ));
                }
            }
        }
    }
    println!(
        "{} cases: both accept {both}, only numpy accepts {only_numpy}, both refuse {neither}",
        verdicts.len()
    );
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(
        both >= 50,
        "too few accepted cases ({both}) to mean anything"
    );
}
