//! The contracts every [`Backend`] keeps, one generic function per contract, run for every
//! backend this machine has: the CPU backend always (with 1 and 3 threads), in bf16 precision too
//! on a CPU with AVX-512 BF16, the CUDA backend when `select_backend` finds a usable GPU
//! (elsewhere those parts are compiled but not run).
//!
//! Expected values come from an f64 reference written here (`reference_row`), never from the
//! code under test.

use half::f16;
use isoclip::align::synthetic::Rng;
use std::sync::Arc;

use isoclip::align::{LinearMap, MatrixF32};
use isoclip::backend::bf16::Bf16Kernel;
use isoclip::backend::cpu::CpuBackend;
use isoclip::backend::{
    select_backend, Backend, BlockStats, DeviceChoice, ElemType, NonFinitePolicy, Precision,
    ProjectionOptions, RowsIn, RowsOut,
};
use isoclip::Error;

/// A backend under test, with how closely it must match the f64 reference.
struct Subject {
    name: String,
    backend: Box<dyn Backend>,
    /// The precision every call of the contracts runs at.
    precision: Precision,
    /// Largest allowed |got − want| of a normalised output value with f32 output.
    tolerance: f64,
}

impl Subject {
    /// Prepares `map` on this backend and projects once.
    fn project(
        &self,
        map: &LinearMap,
        opts: &ProjectionOptions,
        input: RowsIn<'_>,
        output: RowsOut<'_>,
    ) -> Result<BlockStats, Error> {
        let prepared = self.backend.prepare(Arc::new(map.clone()))?;
        let opts = ProjectionOptions {
            precision: self.precision,
            ..*opts
        };
        self.backend.project(&prepared, &opts, input, output)
    }
}

fn subjects() -> Vec<Subject> {
    let mut v = vec![
        Subject {
            name: "cpu x1".into(),
            backend: Box::new(CpuBackend::new(Some(1)).unwrap()),
            precision: Precision::F32,
            tolerance: 1e-5,
        },
        Subject {
            name: "cpu x3".into(),
            backend: Box::new(CpuBackend::new(Some(3)).unwrap()),
            precision: Precision::F32,
            tolerance: 1e-5,
        },
    ];
    if Bf16Kernel::new().is_some() {
        for threads in [1, 3] {
            v.push(Subject {
                name: format!("cpu x{threads} bf16"),
                backend: Box::new(CpuBackend::new(Some(threads)).unwrap()),
                precision: Precision::Bf16,
                // Inputs and weights rounded to 8 significant bits (2^-9 relative each), f32
                // sums: about 2^-8 · Σ|x w| per value, over a norm of ~Σ|x w| / sqrt(d_in)
                // for these random rows.
                tolerance: 3e-2,
            });
        }
    } else {
        eprintln!("no AVX-512 BF16 on this CPU: the bf16 contracts are not run");
    }
    // `Cuda` (not `Auto`) so that a CPU fallback is never mistaken for a GPU.
    if let Ok((backend, _)) = select_backend(DeviceChoice::Cuda(None), Some(1)) {
        v.push(Subject {
            name: backend.describe(),
            backend,
            precision: Precision::F32,
            // fp16 tensor cores with f32 accumulation.
            tolerance: 3e-3,
        });
    }
    v
}

/// Runs `contract` for every subject.
fn for_every_backend(contract: impl Fn(&Subject)) {
    for s in subjects() {
        eprintln!("contract on {}", s.name);
        contract(&s);
    }
}

fn random_map(d_in: usize, d_out: usize, bias: bool, seed: u64) -> LinearMap {
    let mut rng = Rng::new(seed);
    LinearMap {
        weight: MatrixF32 {
            rows: d_in,
            cols: d_out,
            data: (0..d_in * d_out)
                .map(|_| (rng.normal() * 0.1) as f32)
                .collect(),
        },
        bias: bias.then(|| (0..d_out).map(|_| (rng.normal() * 0.1) as f32).collect()),
    }
}

fn random_rows(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..rows * cols).map(|_| rng.normal() as f32).collect()
}

/// `x · W + b` in f64, normalised when asked (a zero row stays zero).
fn reference_row(map: &LinearMap, x: &[f32], normalize: bool) -> Vec<f64> {
    let (d_in, d_out) = (map.weight.rows, map.weight.cols);
    let mut y: Vec<f64> = match &map.bias {
        Some(b) => b.iter().map(|v| f64::from(*v)).collect(),
        None => vec![0.0; d_out],
    };
    for (k, xk) in x.iter().enumerate().take(d_in) {
        for (c, yc) in y.iter_mut().enumerate() {
            *yc += f64::from(*xk) * f64::from(map.weight.data[k * d_out + c]);
        }
    }
    let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    if normalize && norm > 0.0 {
        y.iter_mut().for_each(|v| *v /= norm);
    }
    y
}

fn encode(values: &[f32], elem: ElemType) -> Vec<u8> {
    match elem {
        ElemType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        ElemType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn decode(bytes: &[u8], elem: ElemType) -> Vec<f32> {
    match elem {
        ElemType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        ElemType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// Projects dense rows; returns the stats (or error) and the decoded output.
fn project_dense(
    s: &Subject,
    map: &LinearMap,
    opts: &ProjectionOptions,
    x: &[f32],
    input: ElemType,
) -> (Result<BlockStats, Error>, Vec<f32>) {
    let (d_in, d_out) = (map.weight.rows, map.weight.cols);
    let rows = x.len() / d_in;
    let xb = encode(x, input);
    let mut out = vec![0xABu8; rows * d_out * opts.output.size()];
    let r = s.project(
        map,
        opts,
        RowsIn::dense(&xb, rows, d_in, input),
        RowsOut::dense(&mut out, rows, d_out, opts.output),
    );
    (r, decode(&out, opts.output))
}

fn opts(output: ElemType, normalize: bool, nonfinite: NonFinitePolicy) -> ProjectionOptions {
    ProjectionOptions {
        output,
        normalize,
        nonfinite,
        ..Default::default()
    }
}

fn assert_close(s: &Subject, got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{}: {what}: length", s.name);
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tol,
            "{}: {what}: column {c}: got {g}, want {w}",
            s.name
        );
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

fn shapes_are_refused(s: &Subject) {
    let map = random_map(16, 8, false, 1);
    let o = ProjectionOptions::default();
    let x = vec![0u8; 4 * 16 * 2];
    let mut out = vec![0u8; 4 * 8 * 2];
    let cases: Vec<(RowsIn<'_>, usize, usize)> = vec![
        // (input view, output cols, output rows)
        (RowsIn::dense(&x, 4, 15, ElemType::F16), 8, 4),
        (RowsIn::dense(&x, 4, 16, ElemType::F16), 7, 4),
        (RowsIn::dense(&x, 4, 16, ElemType::F16), 8, 3),
    ];
    for (input, cols, rows) in cases {
        let e = s
            .project(
                &map,
                &o,
                input,
                RowsOut::dense(&mut out[..rows * cols * 2], rows, cols, ElemType::F16),
            )
            .unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{}: {e:?}", s.name);
    }
    // A buffer too short for its rows, and a stride smaller than a row.
    let short = RowsIn::dense(&x[..x.len() - 2], 4, 16, ElemType::F16);
    let e = s
        .project(
            &map,
            &o,
            short,
            RowsOut::dense(&mut out, 4, 8, ElemType::F16),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input buffer holds 126 bytes but 4 rows with stride 32 need 128",
        "{}",
        s.name
    );
    let narrow = RowsIn {
        row_stride: 30,
        ..RowsIn::dense(&x, 4, 16, ElemType::F16)
    };
    let e = s
        .project(
            &map,
            &o,
            narrow,
            RowsOut::dense(&mut out, 4, 8, ElemType::F16),
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{}: {e:?}", s.name);
}

#[test]
fn every_backend_refuses_views_that_do_not_fit_the_map() {
    for_every_backend(shapes_are_refused);
}

fn nonfinite_rows_fail_at_the_lowest_row_or_become_counted_zeros(s: &Subject) {
    let (d_in, d_out, rows) = (24, 10, 700);
    let map = random_map(d_in, d_out, true, 2);
    let mut x = random_rows(rows, d_in, 3);
    // Three bad rows in three different 128-row blocks; the lowest is 300.
    x[650 * d_in + 5] = f32::NAN;
    x[300 * d_in + 23] = f32::INFINITY;
    x[517 * d_in] = f32::NEG_INFINITY;
    for input in [ElemType::F16, ElemType::F32] {
        let (r, _) = project_dense(
            s,
            &map,
            &opts(ElemType::F16, true, NonFinitePolicy::Error),
            &x,
            input,
        );
        assert!(
            matches!(r, Err(Error::NonFiniteRow { row: 300 })),
            "{}: {r:?}",
            s.name
        );
        let (r, y) = project_dense(
            s,
            &map,
            &opts(ElemType::F32, true, NonFinitePolicy::Zero),
            &x,
            input,
        );
        assert_eq!(
            r.unwrap(),
            BlockStats {
                zero_norm_rows: 0,
                nonfinite_rows: 3
            },
            "{}",
            s.name
        );
        for bad in [300, 517, 650] {
            assert!(
                y[bad * d_out..(bad + 1) * d_out].iter().all(|v| *v == 0.0),
                "{}: row {bad} not zero",
                s.name
            );
        }
        let read = decode(&encode(&x[299 * d_in..300 * d_in], input), input);
        let want = reference_row(&map, &read, true);
        assert_close(
            s,
            &y[299 * d_out..300 * d_out],
            &want,
            s.tolerance,
            "row 299",
        );
    }
}

#[test]
fn every_backend_reports_the_lowest_nonfinite_row_or_zeroes_and_counts_them() {
    for_every_backend(nonfinite_rows_fail_at_the_lowest_row_or_become_counted_zeros);
}

fn zero_norm_rows_are_zeros_and_counted(s: &Subject) {
    let (d_in, d_out, rows) = (16, 6, 200);
    let map = random_map(d_in, d_out, false, 4);
    let mut x = random_rows(rows, d_in, 5);
    for r in [0, 129, 199] {
        x[r * d_in..(r + 1) * d_in].fill(0.0);
    }
    // Negative zeros too: a zero-norm row is written as +0.
    x[50 * d_in..51 * d_in].fill(-0.0);
    for normalize in [true, false] {
        let o = opts(ElemType::F32, normalize, NonFinitePolicy::Error);
        let xb = encode(&x, ElemType::F32);
        let mut out = vec![0xABu8; rows * d_out * 4];
        let stats = s
            .project(
                &map,
                &o,
                RowsIn::dense(&xb, rows, d_in, ElemType::F32),
                RowsOut::dense(&mut out, rows, d_out, ElemType::F32),
            )
            .unwrap();
        assert_eq!(stats.zero_norm_rows, 4, "{}", s.name);
        assert_eq!(stats.nonfinite_rows, 0, "{}", s.name);
        for r in [0, 50, 129, 199] {
            assert!(
                out[r * d_out * 4..(r + 1) * d_out * 4]
                    .iter()
                    .all(|b| *b == 0),
                "{}: row {r} is not +0",
                s.name
            );
        }
    }
}

#[test]
fn every_backend_writes_zero_norm_rows_as_zeros_and_counts_them() {
    for_every_backend(zero_norm_rows_are_zeros_and_counted);
}

/// Rows that are finite but extreme: each is a base row times a factor, or a constant.
fn extreme_rows(base: &[f32]) -> Vec<(String, Vec<f32>)> {
    let scaled = |f: f32| base.iter().map(|v| v * f).collect::<Vec<f32>>();
    let mut rows = vec![
        ("base x 1e20".to_string(), scaled(1e20)),
        ("base x 1e-30".to_string(), scaled(1e-30)),
        ("base x 1e-38".to_string(), scaled(1e-38)),
        ("constant 1e-42 (subnormal)".into(), vec![1e-42; base.len()]),
        ("constant 3e38".into(), vec![3e38; base.len()]),
        ("constant -3e38".into(), vec![-3e38; base.len()]),
    ];
    let mut big = scaled(1.0);
    big.iter_mut().enumerate().for_each(|(i, v)| {
        *v = if i % 2 == 0 {
            f32::MAX
        } else {
            -f32::MAX / 3.0
        }
    });
    rows.push(("alternating ±f32::MAX".into(), big));
    rows
}

fn normalisation_is_exact_for_extreme_finite_rows(s: &Subject) {
    let (d_in, d_out) = (40, 12);
    let map = random_map(d_in, d_out, false, 6);
    let base: Vec<f32> = random_rows(1, d_in, 7);
    for (what, row) in extreme_rows(&base) {
        // The direction of the result in f64, from the row's exact value.
        let want = reference_row(&map, &row, true);
        for out_elem in [ElemType::F16, ElemType::F32] {
            let (r, y) = project_dense(
                s,
                &map,
                &opts(out_elem, true, NonFinitePolicy::Error),
                &row,
                ElemType::F32,
            );
            assert_eq!(
                r.unwrap_or_else(|e| panic!("{}: {what}: {e}", s.name)),
                BlockStats::default(),
                "{}: {what}",
                s.name
            );
            let tol = match out_elem {
                ElemType::F16 => s.tolerance.max(1e-3),
                ElemType::F32 => s.tolerance,
            };
            assert_close(s, &y, &want, tol, &what);
            assert!(
                (norm(&y) - 1.0).abs() <= 2.0 * tol,
                "{}: {what}: norm {}",
                s.name,
                norm(&y)
            );
        }
    }
}

#[test]
fn every_backend_normalises_extreme_finite_rows_exactly() {
    for_every_backend(normalisation_is_exact_for_extreme_finite_rows);
}

fn unrepresentable_results_fail_or_become_counted_zeros(s: &Subject) {
    let (d_in, d_out, rows) = (16, 8, 300);
    let mut map = random_map(d_in, d_out, false, 8);
    // Weights of about 3: a row of ±3e38 then overflows f32 whatever the signs.
    map.weight.data.iter_mut().for_each(|w| *w *= 30.0);
    let mut x = random_rows(rows, d_in, 9);
    // Unnormalised values of about 1e6 do not fit f16 (max 65504); 1e38-scale rows overflow f32.
    for v in &mut x[250 * d_in..251 * d_in] {
        *v *= 1e7;
    }
    for v in &mut x[140 * d_in..141 * d_in] {
        *v = v.signum() * 3e38;
    }
    // f16 output: rows 140 and 250 both fail; the lowest is reported.
    let (r, _) = project_dense(
        s,
        &map,
        &opts(ElemType::F16, false, NonFinitePolicy::Error),
        &x,
        ElemType::F32,
    );
    match r {
        Err(Error::Unrepresentable { row: 140, .. }) => {}
        other => panic!("{}: {other:?}", s.name),
    }
    // f32 output: only the row beyond f32 fails.
    let (r, y) = project_dense(
        s,
        &map,
        &opts(ElemType::F32, false, NonFinitePolicy::Error),
        &x,
        ElemType::F32,
    );
    match r {
        Err(Error::Unrepresentable { row: 140, message }) => {
            if s.name.starts_with("cpu") {
                assert_eq!(
                    message,
                    "the result overflows f32 although the input row is finite"
                );
            }
        }
        other => panic!("{}: {other:?} {:?}", s.name, &y[..4]),
    }
    // Under the zero policy both become zeros counted with the non-finite rows; row 250 in f32
    // is exact (unnormalised, relative tolerance).
    let (r, y) = project_dense(
        s,
        &map,
        &opts(ElemType::F16, false, NonFinitePolicy::Zero),
        &x,
        ElemType::F32,
    );
    assert_eq!(
        r.unwrap(),
        BlockStats {
            zero_norm_rows: 0,
            nonfinite_rows: 2
        },
        "{}",
        s.name
    );
    for bad in [140, 250] {
        assert!(y[bad * d_out..(bad + 1) * d_out].iter().all(|v| *v == 0.0));
    }
    assert!(y.iter().all(|v| v.is_finite()), "{}", s.name);
    x[140 * d_in..141 * d_in].fill(1.0);
    let (r, y) = project_dense(
        s,
        &map,
        &opts(ElemType::F32, false, NonFinitePolicy::Error),
        &x,
        ElemType::F32,
    );
    r.unwrap();
    let want = reference_row(&map, &x[250 * d_in..251 * d_in], false);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert_close(
        s,
        &y[250 * d_out..251 * d_out],
        &want,
        scale * s.tolerance,
        "row 250 unnormalised",
    );
}

#[test]
fn every_backend_refuses_or_zeroes_results_its_output_type_cannot_hold() {
    for_every_backend(unrepresentable_results_fail_or_become_counted_zeros);
}

fn every_dtype_pair_matches_the_reference(s: &Subject) {
    let (d_in, d_out, rows) = (33, 17, 130);
    for bias in [false, true] {
        let map = random_map(d_in, d_out, bias, 10);
        // Values exactly representable in f16, so both input types carry the same numbers.
        let x: Vec<f32> = random_rows(rows, d_in, 11)
            .iter()
            .map(|v| f16::from_f32(*v).to_f32())
            .collect();
        for input in [ElemType::F16, ElemType::F32] {
            for output in [ElemType::F16, ElemType::F32] {
                for normalize in [true, false] {
                    let o = opts(output, normalize, NonFinitePolicy::Error);
                    let (r, y) = project_dense(s, &map, &o, &x, input);
                    r.unwrap();
                    let tol = match output {
                        ElemType::F16 => s.tolerance.max(2e-3),
                        ElemType::F32 => s.tolerance,
                    } * if normalize { 1.0 } else { 4.0 };
                    for row in [0, 64, 129] {
                        let want = reference_row(&map, &x[row * d_in..(row + 1) * d_in], normalize);
                        let what = format!(
                            "{}->{} bias {bias} normalize {normalize} row {row}",
                            input.name(),
                            output.name()
                        );
                        assert_close(s, &y[row * d_out..(row + 1) * d_out], &want, tol, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn every_backend_matches_the_reference_for_f16_and_f32_in_and_out() {
    for_every_backend(every_dtype_pair_matches_the_reference);
}

fn strided_views_read_and_write_only_their_rows(s: &Subject) {
    let (d_in, d_out, rows) = (20, 9, 140);
    let map = random_map(d_in, d_out, true, 12);
    let x = random_rows(rows, d_in, 13);
    let (in_stride, out_stride) = ((d_in + 5) * 4, (d_out + 3) * 2);
    let mut xb = vec![0x7Fu8; rows * in_stride]; // pads hold NaN bit patterns: must be ignored
    for r in 0..rows {
        xb[r * in_stride..r * in_stride + d_in * 4]
            .copy_from_slice(&encode(&x[r * d_in..(r + 1) * d_in], ElemType::F32));
    }
    let mut out = vec![0xCDu8; rows * out_stride];
    let stats = s
        .project(
            &map,
            &ProjectionOptions::default(),
            RowsIn {
                bytes: &xb,
                rows,
                cols: d_in,
                row_stride: in_stride,
                elem: ElemType::F32,
            },
            RowsOut {
                bytes: &mut out,
                rows,
                cols: d_out,
                row_stride: out_stride,
                elem: ElemType::F16,
            },
        )
        .unwrap();
    assert_eq!(stats, BlockStats::default(), "{}", s.name);
    for r in 0..rows {
        let row = &out[r * out_stride..(r + 1) * out_stride];
        assert!(
            row[d_out * 2..].iter().all(|b| *b == 0xCD),
            "{}: pad of row {r}",
            s.name
        );
        let want = reference_row(&map, &x[r * d_in..(r + 1) * d_in], true);
        assert_close(
            s,
            &decode(&row[..d_out * 2], ElemType::F16),
            &want,
            s.tolerance.max(2e-3),
            "strided",
        );
    }
}

#[test]
fn every_backend_honours_row_strides_and_leaves_pads_alone() {
    for_every_backend(strided_views_read_and_write_only_their_rows);
}

fn reruns_are_byte_identical(s: &Subject) {
    let (d_in, d_out, rows) = (48, 20, 1000);
    let map = random_map(d_in, d_out, true, 14);
    let x = random_rows(rows, d_in, 15);
    let run = || {
        let xb = encode(&x, ElemType::F16);
        let mut out = vec![0u8; rows * d_out * 2];
        s.project(
            &map,
            &ProjectionOptions::default(),
            RowsIn::dense(&xb, rows, d_in, ElemType::F16),
            RowsOut::dense(&mut out, rows, d_out, ElemType::F16),
        )
        .unwrap();
        out
    };
    assert!(run() == run(), "{}", s.name);
}

#[test]
fn every_backend_is_deterministic() {
    for_every_backend(reruns_are_byte_identical);
}

#[test]
fn cpu_results_do_not_depend_on_the_thread_count() {
    let (d_in, d_out, rows) = (48, 20, 1000);
    let map = random_map(d_in, d_out, true, 16);
    let mut x = random_rows(rows, d_in, 17);
    x[777 * d_in..778 * d_in]
        .iter_mut()
        .for_each(|v| *v *= 1e30);
    let xb = encode(&x, ElemType::F32);
    let run = |threads| {
        let mut out = vec![0u8; rows * d_out * 2];
        let cpu = CpuBackend::new(Some(threads)).unwrap();
        cpu.project(
            &cpu.prepare(Arc::new(map.clone())).unwrap(),
            &ProjectionOptions::default(),
            RowsIn::dense(&xb, rows, d_in, ElemType::F32),
            RowsOut::dense(&mut out, rows, d_out, ElemType::F16),
        )
        .unwrap();
        out
    };
    let one = run(1);
    for t in [2, 3, 7] {
        assert!(run(t) == one, "{t} threads differ from 1");
    }
}

#[test]
fn the_cpu_backend_refuses_absurd_thread_counts() {
    for n in [1025, 100_000, usize::MAX] {
        match CpuBackend::new(Some(n)) {
            Err(Error::InvalidArgument(m)) => assert_eq!(
                m,
                format!(
                    "{n} compute threads requested; at most 1024 are allowed (0 uses every core)"
                )
            ),
            Err(e) => panic!("{n}: {e:?}"),
            Ok(_) => panic!("{n} threads accepted"),
        }
    }
    assert_eq!(CpuBackend::new(Some(1024)).unwrap().threads(), 1024);
}

fn prepared_maps_serve_many_calls_and_only_their_backend(s: &Subject) {
    let (d_in, d_out, rows) = (24, 10, 200);
    let map = Arc::new(random_map(d_in, d_out, true, 20));
    let prepared = s.backend.prepare(map.clone()).unwrap();
    assert_eq!((prepared.d_in(), prepared.d_out()), (d_in, d_out));
    assert_eq!(prepared.owner(), s.backend.id());
    // The prepared map shares the weights, it does not copy them.
    assert!(Arc::ptr_eq(prepared.shared(), &map));
    let x = random_rows(rows, d_in, 21);
    let xb = encode(&x, ElemType::F32);
    let o = opts(ElemType::F32, true, NonFinitePolicy::Error);
    let run = |p: &isoclip::backend::PreparedMap| {
        let mut out = vec![0u8; rows * d_out * 4];
        s.backend
            .project(
                p,
                &o,
                RowsIn::dense(&xb, rows, d_in, ElemType::F32),
                RowsOut::dense(&mut out, rows, d_out, ElemType::F32),
            )
            .unwrap();
        decode(&out, ElemType::F32)
    };
    let first = run(&prepared);
    assert!(run(&prepared) == first, "a second call differs");
    for r in [0, 127, 128, rows - 1] {
        let want = reference_row(&map, &x[r * d_in..(r + 1) * d_in], true);
        for (c, w) in want.iter().enumerate() {
            let got = f64::from(first[r * d_out + c]);
            assert!(
                (got - w).abs() <= s.tolerance,
                "row {r} col {c}: {got} vs {w}"
            );
        }
    }
    // A map prepared by another backend is an error, not a panic or a wrong result.
    let other = CpuBackend::new(Some(1)).unwrap();
    let foreign = other.prepare(map.clone()).unwrap();
    let mut out = vec![0u8; rows * d_out * 4];
    let e = s
        .backend
        .project(
            &foreign,
            &o,
            RowsIn::dense(&xb, rows, d_in, ElemType::F32),
            RowsOut::dense(&mut out, rows, d_out, ElemType::F32),
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert!(e.to_string().contains("prepared by another backend"), "{e}");
    assert!(e.to_string().contains(&other.describe()), "{e}");
}

#[test]
fn every_backend_prepares_a_map_once_for_many_calls() {
    for_every_backend(prepared_maps_serve_many_calls_and_only_their_backend);
}

fn row_blocks_keep_bytes_when_calls_are_cut_at_them(s: &Subject) {
    let (d_in, d_out, rows) = (40, 12, 700);
    let map = Arc::new(random_map(d_in, d_out, false, 22));
    let prepared = s.backend.prepare(map).unwrap();
    let block = s.backend.row_block();
    assert!(block > 0 && block < rows, "{block}");
    assert!(s.backend.preferred_chunk_bytes() > 0);
    let x = random_rows(rows, d_in, 23);
    let xb = encode(&x, ElemType::F16);
    let o = ProjectionOptions::default();
    let project = |range: std::ops::Range<usize>, out: &mut [u8]| {
        s.backend
            .project(
                &prepared,
                &o,
                RowsIn::dense(
                    &xb[range.start * d_in * 2..range.end * d_in * 2],
                    range.len(),
                    d_in,
                    ElemType::F16,
                ),
                RowsOut::dense(out, range.len(), d_out, ElemType::F16),
            )
            .unwrap();
    };
    let mut whole = vec![0u8; rows * d_out * 2];
    project(0..rows, &mut whole);
    // Calls cut at multiples of the row block give the bytes of one call.
    let mut cut = vec![0u8; rows * d_out * 2];
    let mut start = 0;
    for len in [block, 3 * block, rows] {
        let end = (start + len).min(rows);
        project(start..end, &mut cut[start * d_out * 2..end * d_out * 2]);
        start = end;
        if start == rows {
            break;
        }
    }
    assert!(
        cut == whole,
        "calls cut at row blocks of {block} differ from one call"
    );
}

#[test]
fn every_backend_gives_one_calls_bytes_when_cut_at_row_blocks() {
    for_every_backend(row_blocks_keep_bytes_when_calls_are_cut_at_them);
}
