//! GPU checks and timings for scripts/gpu-check.sh (build here with `cargo build --release
//! --examples`, run on the GPU host). Every line it prints is tab-separated: `what`, then
//! `key=value` fields, so the script can assemble one table.
//!
//!   gpu_bench parity --rows N --form compact|full [--input f16|f32] [--output f16|f32]
//!   gpu_bench kernel --d-in D --d-out M --rows N [--input f16|f32] [--output f16|f32] [--iters K]
//!   gpu_bench h2d [--mb MB]
//!   gpu_bench e2e --npy FILE --form compact|full [--device cuda|cpu]
//!
//! `parity` and `e2e` use the synthetic ViT-B/16-shaped model (768 -> 512, image band 200/50,
//! so compact is 768 -> 262): real shapes and a realistic spectrum, no checkpoint needed.

fn main() {
    #[cfg(feature = "cuda")]
    if let Err(e) = bench::main() {
        eprintln!("gpu_bench: {e}");
        std::process::exit(1);
    }
    #[cfg(not(feature = "cuda"))]
    {
        eprintln!("gpu_bench: this build has no CUDA support (enable the `cuda` feature)");
        std::process::exit(2);
    }
}

#[cfg(feature = "cuda")]
mod bench {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Instant;

    use half::f16;
    use isoclip::align::synthetic::{Rng, SyntheticModel};
    use std::sync::Arc;

    use isoclip::align::{LinearMap, MatrixF32};
    use isoclip::backend::cpu::CpuBackend;
    use isoclip::backend::cuda::CudaBackend;
    use isoclip::backend::{
        Backend, BlockStats, ElemType, InputKind, NonFinitePolicy, OutputForm, ProjectionOptions,
        RowsIn, RowsOut,
    };
    use isoclip::formats::npy::{Accept, NpyMatrix};
    use isoclip::{BandSpec, Modality};

    type R<T> = Result<T, String>;

    struct Args(HashMap<String, String>);

    impl Args {
        fn parse(v: &[String]) -> R<Args> {
            let mut m = HashMap::new();
            let mut it = v.iter();
            while let Some(k) = it.next() {
                let key = k
                    .strip_prefix("--")
                    .ok_or_else(|| format!("unexpected argument {k}"))?;
                let val = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
                m.insert(key.to_string(), val.clone());
            }
            Ok(Args(m))
        }
        fn get(&self, k: &str, default: &str) -> String {
            self.0
                .get(k)
                .cloned()
                .unwrap_or_else(|| default.to_string())
        }
        fn num(&self, k: &str, default: usize) -> R<usize> {
            self.get(k, &default.to_string())
                .parse()
                .map_err(|_| format!("--{k} must be a number"))
        }
        fn elem(&self, k: &str) -> R<ElemType> {
            match self.get(k, "f16").as_str() {
                "f16" => Ok(ElemType::F16),
                "f32" => Ok(ElemType::F32),
                o => Err(format!("--{k} {o}: expected f16 or f32")),
            }
        }
        fn form(&self) -> R<OutputForm> {
            match self.get("form", "compact").as_str() {
                "compact" => Ok(OutputForm::Compact),
                "full" => Ok(OutputForm::Full),
                o => Err(format!("--form {o}: expected compact or full")),
            }
        }
    }

    pub fn main() -> R<()> {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let (cmd, rest) = argv
            .split_first()
            .ok_or("usage: gpu_bench parity|kernel|h2d|e2e ...")?;
        let args = Args::parse(rest)?;
        match cmd.as_str() {
            "parity" => parity(&args),
            "kernel" => kernel(&args),
            "h2d" => h2d(&args),
            "e2e" => e2e(&args),
            other => Err(format!("unknown command {other}")),
        }
    }

    fn gpu() -> R<CudaBackend> {
        CudaBackend::new(None, None).map_err(|e| format!("no usable CUDA GPU: {e}"))
    }

    fn synthetic_map(form: OutputForm) -> R<Arc<LinearMap>> {
        let model = SyntheticModel::vit_b().map_err(|e| e.to_string())?;
        let p = isoclip::fit(
            &model.weights,
            &[(Modality::Image, BandSpec::new(200, 50))],
            None,
        )
        .map_err(|e| e.to_string())?;
        let maps = p.image.ok_or("no image maps")?;
        maps.select(InputKind::Features, form)
            .map_err(|e| e.to_string())
    }

    fn random_map(d_in: usize, d_out: usize) -> Arc<LinearMap> {
        let mut rng = Rng::new(7);
        let s = 1.0 / (d_in as f64).sqrt();
        Arc::new(LinearMap {
            weight: MatrixF32 {
                rows: d_in,
                cols: d_out,
                data: (0..d_in * d_out)
                    .map(|_| (rng.normal() * s) as f32)
                    .collect(),
            },
            bias: None,
        })
    }

    /// Random feature rows (N(0,1), like pre-projection ViT features up to scale).
    fn random_rows(rows: usize, cols: usize, elem: ElemType, seed: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(rows * cols * elem.size());
        for _ in 0..rows * cols {
            let v = rng.normal() as f32;
            match elem {
                ElemType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                ElemType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
        out
    }

    fn row_f64(bytes: &[u8], r: usize, cols: usize, elem: ElemType) -> Vec<f64> {
        let s = r * cols * elem.size();
        (0..cols)
            .map(|c| match elem {
                ElemType::F16 => {
                    let o = s + 2 * c;
                    f16::from_le_bytes([bytes[o], bytes[o + 1]]).to_f64()
                }
                ElemType::F32 => {
                    let o = s + 4 * c;
                    f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as f64
                }
            })
            .collect()
    }

    fn cos(a: &[f64], b: &[f64]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            d / (na * nb)
        }
    }

    /// Prepares `map` on `be` (not timed), then projects the rows once (timed).
    fn run(
        be: &dyn Backend,
        map: &Arc<LinearMap>,
        opts: &ProjectionOptions,
        x: &[u8],
        rows: usize,
        input: ElemType,
    ) -> (isoclip::Result<BlockStats>, Vec<u8>, f64) {
        let mut out = vec![0u8; rows * map.d_out() * opts.output.size()];
        let prepared = match be.prepare(map.clone()) {
            Ok(p) => p,
            Err(e) => return (Err(e), out, 0.0),
        };
        let t = Instant::now();
        let r = be.project(
            &prepared,
            opts,
            RowsIn::dense(x, rows, map.d_in(), input),
            RowsOut::dense(&mut out, rows, map.d_out(), opts.output),
        );
        (r, out, t.elapsed().as_secs_f64())
    }

    /// GPU vs CPU on the same rows: max |Δcos| over random pairs, min cos(gpu_i, cpu_i), equal
    /// flags/stats, and the same NaN row named under the Error policy.
    fn parity(a: &Args) -> R<()> {
        let rows = a.num("rows", 200_000)?;
        let form = a.form()?;
        let (input, output) = (a.elem("input")?, a.elem("output")?);
        let map = synthetic_map(form)?;
        let gpu = gpu()?;
        let cpu = CpuBackend::new(None).map_err(|e| e.to_string())?;
        let mut x = random_rows(rows, map.d_in(), input, 42);
        // Special rows: zeros (zero norm), NaN (zeroed under the Zero policy).
        let zero_rows = [7usize, rows / 2 + 3];
        let nan_rows = [rows / 3 + 1, rows - 2];
        let esz = input.size();
        for &r in &zero_rows {
            x[r * map.d_in() * esz..(r + 1) * map.d_in() * esz].fill(0);
        }
        for &r in &nan_rows {
            let o = (r * map.d_in() + 5) * esz;
            match input {
                ElemType::F16 => x[o..o + 2].copy_from_slice(&f16::NAN.to_le_bytes()),
                ElemType::F32 => x[o..o + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
            }
        }
        let opts = ProjectionOptions {
            output,
            nonfinite: NonFinitePolicy::Zero,
            ..Default::default()
        };
        let (rc, yc, tc) = run(&cpu, &map, &opts, &x, rows, input);
        let (rg, yg, tg) = run(&gpu, &map, &opts, &x, rows, input);
        let (sc, sg) = (
            rc.map_err(|e| e.to_string())?,
            rg.map_err(|e| e.to_string())?,
        );
        let m = map.d_out();
        let mut rng = Rng::new(3);
        let mut max_dcos = 0.0f64;
        for _ in 0..20_000 {
            let (i, j) = (rng.below(rows), rng.below(rows));
            let dc = cos(&row_f64(&yg, i, m, output), &row_f64(&yg, j, m, output))
                - cos(&row_f64(&yc, i, m, output), &row_f64(&yc, j, m, output));
            max_dcos = max_dcos.max(dc.abs());
        }
        let mut min_self = 1.0f64;
        let mut max_abs = 0.0f64;
        for i in (0..rows).step_by((rows / 50_000).max(1)) {
            let (g, c) = (row_f64(&yg, i, m, output), row_f64(&yc, i, m, output));
            if c.iter().any(|v| *v != 0.0) {
                min_self = min_self.min(cos(&g, &c));
            }
            for (p, q) in g.iter().zip(&c) {
                max_abs = max_abs.max((p - q).abs());
            }
        }
        // Error policy: both name the same (lowest) NaN row.
        let strict = ProjectionOptions {
            nonfinite: NonFinitePolicy::Error,
            ..opts
        };
        // The contract: the same variant and the same (lowest) row, not merely similar text.
        let ec = run(&cpu, &map, &strict, &x, rows, input).0.err();
        let eg = run(&gpu, &map, &strict, &x, rows, input).0.err();
        let row_of = |e: &Option<isoclip::Error>| match e {
            Some(isoclip::Error::NonFiniteRow { row }) => Some(*row),
            _ => None,
        };
        let same_error = row_of(&ec) == Some(nan_rows[0]) && row_of(&ec) == row_of(&eg);
        let ok = max_dcos <= 2e-3 && sc == sg && same_error;
        println!(
            "parity\tshape={}->{m}\tform={}\tin={}\tout={}\trows={rows}\tmax_abs_dcos={max_dcos:.2e}\t\
             min_self_cos={min_self:.6}\tmax_abs_delta={max_abs:.2e}\tstats_cpu={sc:?}\tstats_gpu={sg:?}\t\
             same_nan_error={same_error}\tcpu_s={tc:.3}\tgpu_s={tg:.3}\tpass={ok}",
            map.d_in(),
            form.name(),
            input.name(),
            output.name()
        );
        if ok {
            Ok(())
        } else {
            Err(format!(
                "parity failed (cpu error {ec:?}, gpu error {eg:?})"
            ))
        }
    }

    fn kernel(a: &Args) -> R<()> {
        let (d_in, d_out) = (a.num("d-in", 768)?, a.num("d-out", 262)?);
        let rows = a.num("rows", 1 << 20)?;
        let iters = a.num("iters", 20)?;
        let (input, output) = (a.elem("input")?, a.elem("output")?);
        let map = random_map(d_in, d_out);
        let opts = ProjectionOptions {
            output,
            ..Default::default()
        };
        let g = gpu()?;
        let prepared = g.prepare(map).map_err(|e| e.to_string())?;
        let t = g
            .time_kernel(&prepared, &opts, input, rows, iters)
            .map_err(|e| e.to_string())?;
        let rps = t.rows_per_second();
        let bytes = (d_in * input.size() + d_out * output.size()) as f64;
        println!(
            "kernel\tshape={d_in}->{d_out}\tin={}\tout={}\trows={rows}\tms={:.3}\trows_per_s={rps:.3e}\t\
             GB_per_s={:.1}\tTFLOP_per_s={:.1}",
            input.name(),
            output.name(),
            t.seconds_per_launch * 1e3,
            rps * bytes / 1e9,
            rps * 2.0 * (d_in * d_out) as f64 / 1e12
        );
        Ok(())
    }

    fn h2d(a: &Args) -> R<()> {
        let mb = a.num("mb", 1024)?;
        let bps = gpu()?.measure_h2d(mb << 20, 5).map_err(|e| e.to_string())?;
        println!("h2d\tbytes={}\tGB_per_s={:.1}", mb << 20, bps / 1e9);
        Ok(())
    }

    /// Rows/s from a .npy file through the engine-sized chunks (64K rows), output discarded.
    fn e2e(a: &Args) -> R<()> {
        let path = a.get("npy", "");
        let form = a.form()?;
        let map = synthetic_map(form)?;
        let m = NpyMatrix::open(Path::new(&path), Accept::Embeddings).map_err(|e| e.to_string())?;
        if m.cols != map.d_in() {
            return Err(format!(
                "{path} has {} columns, need {}",
                m.cols,
                map.d_in()
            ));
        }
        let input = match m.dtype.size() {
            2 => ElemType::F16,
            _ => ElemType::F32,
        };
        let device = a.get("device", "cuda");
        let be: Box<dyn Backend> = if device == "cpu" {
            Box::new(CpuBackend::new(None).map_err(|e| e.to_string())?)
        } else {
            Box::new(gpu()?)
        };
        let prepared = be.prepare(map.clone()).map_err(|e| e.to_string())?;
        m.advise_sequential();
        let chunk = 65_536;
        let mut out = vec![0u8; chunk * map.d_out() * 2];
        let opts = ProjectionOptions::default();
        let t = Instant::now();
        let mut done = 0;
        while done < m.rows {
            let n = chunk.min(m.rows - done);
            be.project(
                &prepared,
                &opts,
                RowsIn::dense(m.row_bytes(done, done + n), n, m.cols, input),
                RowsOut::dense(
                    &mut out[..n * map.d_out() * 2],
                    n,
                    map.d_out(),
                    ElemType::F16,
                ),
            )
            .map_err(|e| e.to_string())?;
            done += n;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "e2e\tdevice={}\tfile={path}\trows={}\tseconds={s:.2}\trows_per_s={:.3e}\tinput_GB_per_s={:.2}",
            be.describe(),
            m.rows,
            m.rows as f64 / s,
            (m.rows * m.cols * input.size()) as f64 / s / 1e9
        );
        Ok(())
    }
}
