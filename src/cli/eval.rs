//! `isoclip eval`: plain CLIP vs IsoCLIP on labelled data — retrieval (mAP, mAP@R, P@R, R@K) or
//! nearest-class-mean classification — with the reference's metric semantics.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};

use super::project::{parse_key_value, parse_location};
use super::signals::atomic_output;
use super::targets::check_output_file;
use super::values;
use isoclip::align::synthetic::{SyntheticModel, SYNTHETIC_IMAGE_BAND};
use isoclip::align::{self, AlignedProjector, BandSpec, Modality, ModalityMaps};
use isoclip::backend::{select_backend, Backend, DeviceChoice, InputKind};
use isoclip::error::{Error, Result};
use isoclip::eval::ncm::{ncm, ClassMeans, NcmResult};
use isoclip::eval::{
    self, labels_from_file, open_rows_from, plots, Projection, RetrievalOptions, RetrievalOutcome,
    RetrievalSummary, Rows, Sets,
};
use isoclip::formats::npy::NpyMatrix;
use isoclip::storage::{self, Location};

/// Rows of the built-in synthetic evaluation set, its classes and its seed.
pub const SYNTHETIC_ROWS: usize = 3000;
pub const SYNTHETIC_CLASSES: usize = 60;
pub const SYNTHETIC_DATA_SEED: u64 = 7;
/// Bins of the similarity histograms over [-1, 1] (width 0.01): the overlap numbers depend on it.
pub const HISTOGRAM_BINS: usize = 200;

/// A labelled retrieval set: one set, or queries + gallery. Shared by `eval` and `sweep`.
#[derive(Args, Debug, Clone)]
pub struct SetArgs {
    /// One labelled set (.npy, f16/f32, rows x dims): every row queries all the others, its
    /// own entry excluded (the reference's query split == gallery split case).
    #[arg(long, value_name = "F.npy|URL", value_parser = parse_location, requires = "labels",
          conflicts_with_all = ["query_features", "gallery_features"])]
    pub features: Option<Location>,
    /// Integer labels of --features (.npy, any integer dtype, shape (n,) or (n, 1)).
    #[arg(long, value_name = "L.npy|URL", value_parser = parse_location, requires = "features")]
    pub labels: Option<Location>,
    /// Query rows, searched against --gallery-features (nothing is excluded).
    #[arg(long, value_name = "Q.npy|URL", value_parser = parse_location,
          requires_all = ["query_labels", "gallery_features", "gallery_labels"])]
    pub query_features: Option<Location>,
    /// Integer labels of --query-features.
    #[arg(long, value_name = "QL.npy|URL", value_parser = parse_location, requires = "query_features")]
    pub query_labels: Option<Location>,
    /// Gallery rows that every query is ranked against.
    #[arg(long, value_name = "G.npy|URL", value_parser = parse_location, requires = "query_features")]
    pub gallery_features: Option<Location>,
    /// Integer labels of --gallery-features (relevant = same label as the query).
    #[arg(long, value_name = "GL.npy|URL", value_parser = parse_location, requires = "query_features")]
    pub gallery_labels: Option<Location>,
    /// An object-store option for data files and projectors given as URLs (as for `isoclip
    /// project`); repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub storage_options: Vec<(String, String)>,
    /// What the rows are: pre-projection encoder features, or already-projected CLIP
    /// embeddings (IsoCLIP then goes through the exact embedding route).
    #[arg(long, default_value = "features", value_parser = values::input_kind(
        "Pre-projection encoder features (d_in dims): the paper's setting, exact for every model",
        "Already-projected CLIP embeddings (d dims), e.g. a LAION shard: IsoCLIP through the \
         embedding route (exact only for bias-free projectors)",
    ))]
    pub input_kind: InputKind,
}

/// Opened, validated retrieval inputs.
pub enum LoadedSets {
    One {
        rows: NpyMatrix,
        labels: Vec<i64>,
    },
    QueryGallery {
        queries: NpyMatrix,
        query_labels: Vec<i64>,
        gallery: NpyMatrix,
        gallery_labels: Vec<i64>,
    },
}

/// Opens a row file and its labels (paths or URLs: objects are downloaded to unnamed temporary
/// files); the error names both when the counts differ.
pub fn open_labelled(
    rows: &Location,
    labels: &Location,
    options: &[(String, String)],
) -> Result<(NpyMatrix, Vec<i64>)> {
    let (file, len, rows_name) = storage::open_whole(rows, options)?;
    let m = open_rows_from(file, len, &rows_name)?;
    let (file, len, labels_name) = storage::open_whole(labels, options)?;
    let l = labels_from_file(file, len, &labels_name)?;
    if l.len() != m.rows {
        return Err(Error::Shape(format!(
            "{labels}: holds {} labels, but {rows} has {} rows; they must match one to one",
            l.len(),
            m.rows
        )));
    }
    Ok((m, l))
}

impl SetArgs {
    pub fn given(&self) -> bool {
        self.features.is_some() || self.query_features.is_some()
    }

    pub fn load(&self) -> Result<LoadedSets> {
        if let (Some(f), Some(l)) = (&self.features, &self.labels) {
            let (rows, labels) = open_labelled(f, l, &self.storage_options)?;
            return Ok(LoadedSets::One { rows, labels });
        }
        match (
            &self.query_features,
            &self.query_labels,
            &self.gallery_features,
            &self.gallery_labels,
        ) {
            (Some(q), Some(ql), Some(g), Some(gl)) => {
                let (queries, query_labels) = open_labelled(q, ql, &self.storage_options)?;
                let (gallery, gallery_labels) = open_labelled(g, gl, &self.storage_options)?;
                if queries.cols != gallery.cols {
                    return Err(Error::Shape(format!(
                        "{q} has {} dims per row but {g} has {}; queries and gallery must come from the same encoder",
                        queries.cols,
                        gallery.cols
                    )));
                }
                Ok(LoadedSets::QueryGallery {
                    queries,
                    query_labels,
                    gallery,
                    gallery_labels,
                })
            }
            _ => Err(Error::invalid(
                "give --features F --labels L, or all of --query-features, --query-labels, --gallery-features, --gallery-labels",
            )),
        }
    }
}

impl LoadedSets {
    pub fn sets(&self) -> Sets<'_> {
        match self {
            LoadedSets::One { rows, labels } => Sets::One {
                rows: Rows::Npy(rows),
                labels,
            },
            LoadedSets::QueryGallery {
                queries,
                query_labels,
                gallery,
                gallery_labels,
            } => Sets::QueryGallery {
                queries: Rows::Npy(queries),
                query_labels,
                gallery: Rows::Npy(gallery),
                gallery_labels,
            },
        }
    }
}

/// The built-in synthetic evaluation set (labelled image features of the synthetic model).
pub struct SyntheticSet {
    pub features: Vec<f32>,
    pub labels: Vec<i64>,
    pub rows: usize,
    pub cols: usize,
}

impl SyntheticSet {
    pub fn generate(model: &SyntheticModel, rows: usize) -> Self {
        let (features, labels) =
            model.labelled_image_features(rows, SYNTHETIC_CLASSES, SYNTHETIC_DATA_SEED);
        let cols = features.len() / rows;
        SyntheticSet {
            features,
            labels,
            rows,
            cols,
        }
    }
    /// Rows `[a, b)` as a row source.
    pub fn rows(&self, a: usize, b: usize) -> Rows<'_> {
        Rows::Memory {
            data: &self.features[a * self.cols..b * self.cols],
            rows: b - a,
            cols: self.cols,
            name: "synthetic features",
        }
    }
}

/// The synthetic model fitted with its image band, labelled as synthetic.
pub fn synthetic_projector(model: &SyntheticModel) -> Result<AlignedProjector> {
    let band = BandSpec::new(SYNTHETIC_IMAGE_BAND.0, SYNTHETIC_IMAGE_BAND.1);
    let mut p = align::fit(&model.weights, &[(Modality::Image, band)], None)?;
    p.synthetic = true;
    Ok(p)
}

pub fn describe_sets(sets: &Sets<'_>) -> String {
    let classes = |l: &[i64]| {
        let mut v = l.to_vec();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    match sets {
        Sets::One { rows, labels } => format!(
            "one set: {} ({} rows x {} dims, {} classes); each row queries the other {} (its own entry excluded)",
            rows.name(),
            rows.rows(),
            rows.cols(),
            classes(labels),
            rows.rows() - 1
        ),
        Sets::QueryGallery {
            queries,
            query_labels,
            gallery,
            gallery_labels,
        } => format!(
            "{} queries from {} ({} classes) against a gallery of {} rows from {} ({} classes)",
            queries.rows(),
            queries.name(),
            classes(query_labels),
            gallery.rows(),
            gallery.name(),
            classes(gallery_labels)
        ),
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = concat!(
        "Examples:\n",
        "  isoclip eval                                  # built-in SYNTHETIC model and data\n",
        "  isoclip eval --projector b16.safetensors --features cub_feats.npy --labels cub_labels.npy\n",
        "  isoclip eval --projector b16.safetensors --query-features test.npy --query-labels test_y.npy \\\n",
        "               --gallery-features train.npy --gallery-labels train_y.npy --json\n",
        "  isoclip eval --projector b16.safetensors --input-kind embeddings \\\n",
        "               --features img_emb.npy --labels y.npy\n",
        "  isoclip eval --projector b16.safetensors --ncm --train-features tr.npy --train-labels tr_y.npy \\\n",
        "               --test-features te.npy --test-labels te_y.npy\n",
        "  isoclip eval --svg out/cub                     # + out/cub-precision-at-k.svg, -similarity-*.svg\n",
        "\n",
        "Metrics follow the IsoCLIP reference: mAP (torchmetrics, whole ranked gallery), mAP@R (R counted ",
        "before self-exclusion, as the reference does; 'exact R' is the corrected variant), P@R, R@1/5/10; ",
        "per query, averaged, x100. Ties rank by gallery index. Queries with no relevant item score 0.\n",
        "\n",
        "mAP is torchmetrics 1.4.0.post0's retrieval_average_precision, the version the paper pins. From ",
        "torchmetrics 1.7 on, that function ignores relevant items whose score is <= 0 (PR #3104), so a ",
        "current torchmetrics gives an mAP 0.1 to 0.8 points different on the same data.\n",
        "\n",
        "Exit codes: 0 success; 1 failure (the message names the file and the problem); 2 invalid command line."
    )
)]
pub struct EvalArgs {
    /// Projector file from `isoclip fit`. Without it and without data, the built-in SYNTHETIC
    /// model and data are evaluated.
    #[arg(long, value_name = "FILE|URL", value_parser = parse_location)]
    pub projector: Option<Location>,
    /// Which maps to use when the projector file holds both modalities.
    #[arg(long, value_parser = values::modality())]
    pub modality: Option<Modality>,
    #[command(flatten)]
    pub sets: SetArgs,
    /// Nearest-class-mean classification instead of retrieval (class means of unnormalised
    /// training rows, projected and normalised; top-1 accuracy).
    #[arg(long)]
    pub ncm: bool,
    /// NCM training rows: their class means are the prototypes.
    #[arg(long, value_name = "F.npy|URL", value_parser = parse_location, requires_all = ["ncm", "train_labels", "test_features", "test_labels"])]
    pub train_features: Option<Location>,
    /// Integer labels of --train-features.
    #[arg(long, value_name = "L.npy|URL", value_parser = parse_location, requires = "train_features")]
    pub train_labels: Option<Location>,
    /// NCM test rows, each classified by its nearest class mean.
    #[arg(long, value_name = "F.npy|URL", value_parser = parse_location, requires = "train_features")]
    pub test_features: Option<Location>,
    /// Integer labels of --test-features.
    #[arg(long, value_name = "L.npy|URL", value_parser = parse_location, requires = "train_features")]
    pub test_labels: Option<Location>,
    /// Precision@K is computed for K = 1..=this.
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub curve_k: u32,
    /// Write PREFIX-precision-at-k.svg and PREFIX-similarity-{clip,isoclip}.svg (positive vs
    /// negative pair cosines, with their overlap).
    #[arg(long, value_name = "PREFIX")]
    pub svg: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Where the projector and data come from.
enum Source {
    Synthetic {
        projector: AlignedProjector,
        data: SyntheticSet,
    },
    Files {
        projector: AlignedProjector,
        path: PathBuf,
    },
}

pub fn run(a: EvalArgs) -> Result<()> {
    let t0 = Instant::now();
    if a.ncm && a.sets.given() {
        return Err(Error::invalid(
            "--ncm takes --train-features/--train-labels/--test-features/--test-labels, not retrieval sets",
        ));
    }
    if let Some(prefix) = &a.svg {
        for p in svg_paths(prefix) {
            check_output_file(&p)?;
        }
    }
    let has_data = a.sets.given() || a.train_features.is_some();
    let source = match (&a.projector, has_data) {
        (None, false) => {
            if a.sets.input_kind == InputKind::Embeddings {
                return Err(Error::invalid(
                    "the built-in synthetic data are pre-projection features; --input-kind embeddings needs your own data and --projector",
                ));
            }
            let model = SyntheticModel::vit_b()?;
            Source::Synthetic {
                projector: synthetic_projector(&model)?,
                data: SyntheticSet::generate(&model, SYNTHETIC_ROWS),
            }
        }
        (Some(p), true) => Source::Files {
            projector: storage::load_projector(p, &a.sets.storage_options)?,
            path: PathBuf::from(p.to_string()),
        },
        (None, true) => {
            return Err(Error::invalid(
                "give --projector FILE (written by `isoclip fit`) to evaluate your data",
            ))
        }
        (Some(_), false) => {
            return Err(Error::invalid(
                "give the data to evaluate: --features F --labels L (one set), or --query-features/--query-labels/--gallery-features/--gallery-labels, or --ncm with --train-features/--train-labels/--test-features/--test-labels",
            ))
        }
    };
    let projector = match &source {
        Source::Synthetic { projector, .. } | Source::Files { projector, .. } => projector,
    };
    let modality = a.modality;
    let maps = match &source {
        Source::Files { path, .. } => projector
            .only_modality(modality)
            .map_err(|e| e.in_file(path))?,
        Source::Synthetic { .. } => projector.only_modality(modality)?,
    };
    let kind = a.sets.input_kind;
    let header = Header::new(&source, maps, kind);
    if a.ncm {
        return run_ncm(&a, &source, maps, kind, &header, t0);
    }
    let loaded;
    let sets = match &source {
        Source::Synthetic { data, .. } => Sets::One {
            rows: data.rows(0, data.rows),
            labels: &data.labels,
        },
        Source::Files { .. } => {
            loaded = a.sets.load()?;
            loaded.sets()
        }
    };
    let (plain, iso) = Projection::pair(maps, kind)?;
    let opts = RetrievalOptions {
        curve_max_k: a.curve_k as usize,
        histogram_bins: if a.svg.is_some() { HISTOGRAM_BINS } else { 0 },
    };
    let backend = eval_backend()?;
    let clip = eval::evaluate_sets(backend.as_ref(), sets, &plain, kind, opts)?;
    let isoclip = eval::evaluate_sets(backend.as_ref(), sets, &iso, kind, opts)?;
    let svgs = match &a.svg {
        Some(prefix) => write_svgs(prefix, &clip, &isoclip, &header.label)?,
        None => Vec::new(),
    };
    let seconds = t0.elapsed().as_secs_f64();
    if a.json {
        let v = json!({
            "synthetic": header.synthetic,
            "projector": header.projector,
            "modality": maps.modality.name(),
            "k_top": maps.band.k_top,
            "k_bottom": maps.band.k_bottom,
            "m": maps.m,
            "input_kind": kind.name(),
            "task": "retrieval",
            "data": describe_sets(&sets),
            "clip": summary_json(&clip.summary, clip.histogram.as_ref()),
            "isoclip": summary_json(&isoclip.summary, isoclip.histogram.as_ref()),
            "delta": delta_json(&clip.summary, &isoclip.summary),
            "svg": svgs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "seconds": seconds,
        });
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(());
    }
    header.print()?;
    outln!("data:      {}", describe_sets(&sets))?;
    outln!()?;
    print_retrieval_table(&clip.summary, &isoclip.summary)?;
    if let (Some(hc), Some(hi)) = (&clip.histogram, &isoclip.histogram) {
        outln!(
            "positive/negative similarity overlap (coefficient, {} bins on [-1,1]): CLIP {:.3} -> IsoCLIP {:.3}; IoU {:.3} -> {:.3}",
            hc.bins(),
            hc.overlap(),
            hi.overlap(),
            hc.iou(),
            hi.iou()
        )?;
    }
    for p in &svgs {
        outln!("wrote {}", p.display())?;
    }
    outln!("({seconds:.2} s)")?;
    Ok(())
}

/// The backend `eval` and `sweep` project with: the CPU on every core, so that the numbers
/// are the same on every machine (a GPU's sums run in another order).
pub fn eval_backend() -> Result<Box<dyn Backend>> {
    select_backend(DeviceChoice::Cpu, None).map(|(backend, _)| backend)
}

struct Header {
    synthetic: bool,
    projector: String,
    label: String,
    lines: Vec<String>,
}

impl Header {
    fn new(source: &Source, maps: &ModalityMaps, kind: InputKind) -> Self {
        let (synthetic, projector) = match source {
            Source::Synthetic { projector, .. } => (true, projector.source.clone()),
            Source::Files { path, projector } => (projector.synthetic, path.display().to_string()),
        };
        let mut lines = Vec::new();
        if synthetic {
            lines.push(
                "SYNTHETIC: built-in CLIP-like model and labelled data, for demonstration only (not a real checkpoint or dataset)"
                    .to_string(),
            );
        }
        lines.push(format!("projector: {projector}"));
        lines.push(format!(
            "maps:      {} band [{}, r-{}) keeps m = {} directions (k_top {}, k_bottom {}); input: {}",
            maps.modality,
            maps.band.k_top,
            maps.band.k_bottom,
            maps.m,
            maps.band.k_top,
            maps.band.k_bottom,
            match kind {
                InputKind::Features => "pre-projection features (IsoCLIP via the compact map)",
                InputKind::Embeddings => "CLIP embeddings (IsoCLIP via the embedding route)",
            }
        ));
        let label = if synthetic {
            "SYNTHETIC data".to_string()
        } else {
            format!("{} {}", maps.modality, "retrieval")
        };
        Header {
            synthetic,
            projector,
            label,
            lines,
        }
    }
    fn print(&self) -> Result<()> {
        for l in &self.lines {
            outln!("{l}")?;
        }
        Ok(())
    }
}

fn print_retrieval_table(clip: &RetrievalSummary, iso: &RetrievalSummary) -> Result<()> {
    outln!("{:<16} {:>8} {:>8} {:>8}", "metric", "CLIP", "IsoCLIP", "Δ")?;
    for ((name, c), (_, i)) in clip.rows().iter().zip(iso.rows().iter()) {
        outln!("{name:<16} {c:>8.2} {i:>8.2} {:>+8.2}", i - c)?;
    }
    outln!(
        "per query, averaged, x100 over {} queries ranked against {} gallery items.",
        clip.queries,
        clip.gallery
    )?;
    outln!(
        "mAP@R as in the reference (R counted before self-exclusion); 'exact R' corrects it. Ties rank by gallery index."
    )?;
    if clip.queries_without_relevant > 0 {
        outln!(
            "note: {} queries have no relevant gallery item: they score 0 (the reference's mAP@R would be NaN for them).",
            clip.queries_without_relevant
        )?;
    }
    Ok(())
}

pub fn summary_json(s: &RetrievalSummary, h: Option<&eval::PairHistogram>) -> Value {
    let mut v = serde_json::to_value(s).expect("json");
    if let Some(h) = h {
        v["similarity_overlap"] = json!(h.overlap());
        v["similarity_iou"] = json!(h.iou());
    }
    v
}

fn delta_json(c: &RetrievalSummary, i: &RetrievalSummary) -> Value {
    let mut m = serde_json::Map::new();
    for ((name, a), (_, b)) in c.rows().iter().zip(i.rows().iter()) {
        m.insert((*name).to_string(), json!(b - a));
    }
    Value::Object(m)
}

/// The files `--svg PREFIX` writes: precision@K, then the CLIP and IsoCLIP histograms.
fn svg_paths(prefix: &Path) -> [PathBuf; 3] {
    let with_suffix = |s: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    };
    [
        with_suffix("-precision-at-k.svg"),
        with_suffix("-similarity-clip.svg"),
        with_suffix("-similarity-isoclip.svg"),
    ]
}

/// Writes `bytes` to `path` atomically; a signal during the write leaves no temporary file.
fn write_svg(path: &Path, svg: &str) -> Result<()> {
    atomic_output(path, || {
        isoclip::formats::atomic_write(path, svg.as_bytes())
    })
}

fn write_svgs(
    prefix: &Path,
    clip: &RetrievalOutcome,
    iso: &RetrievalOutcome,
    label: &str,
) -> Result<Vec<PathBuf>> {
    let [curve_path, clip_path, iso_path] = svg_paths(prefix);
    let mut out = Vec::new();
    if let Some(dir) = curve_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let svg = plots::precision_at_k(
        &clip.summary.precision_at_k,
        &iso.summary.precision_at_k,
        &format!("Precision@K, CLIP vs IsoCLIP — {label}"),
    );
    write_svg(&curve_path, &svg)?;
    out.push(curve_path);
    if let (Some(hc), Some(hi)) = (&clip.histogram, &iso.histogram) {
        let axes = plots::HistogramAxes::shared(&[hc, hi]);
        for (p, h, title) in [(clip_path, hc, "CLIP"), (iso_path, hi, "IsoCLIP")] {
            let svg = plots::similarity_histogram(
                h,
                &format!("{title}: cosine similarity of positive vs negative pairs — {label}"),
                &axes,
            );
            write_svg(&p, &svg)?;
            out.push(p);
        }
    }
    Ok(out)
}

fn run_ncm(
    a: &EvalArgs,
    source: &Source,
    maps: &ModalityMaps,
    kind: InputKind,
    header: &Header,
    t0: Instant,
) -> Result<()> {
    let (plain, iso) = Projection::pair(maps, kind)?;
    let files;
    let (train, train_labels, test, test_labels): (Rows<'_>, &[i64], Rows<'_>, &[i64]) =
        match source {
            Source::Synthetic { data, .. } => {
                // First 2/3 of the synthetic rows train, the rest test (the classes are shared).
                let split = data.rows * 2 / 3;
                (
                    data.rows(0, split),
                    &data.labels[..split],
                    data.rows(split, data.rows),
                    &data.labels[split..],
                )
            }
            Source::Files { .. } => {
                let (Some(trf), Some(trl), Some(tef), Some(tel)) = (
                    &a.train_features,
                    &a.train_labels,
                    &a.test_features,
                    &a.test_labels,
                ) else {
                    return Err(Error::invalid(
                        "--ncm needs --train-features, --train-labels, --test-features and --test-labels",
                    ));
                };
                let tr = open_labelled(trf, trl, &a.sets.storage_options)?;
                let te = open_labelled(tef, tel, &a.sets.storage_options)?;
                if tr.0.cols != te.0.cols {
                    return Err(Error::Shape(format!(
                        "{trf} has {} dims per row but {tef} has {}",
                        tr.0.cols, te.0.cols
                    )));
                }
                files = (tr, te);
                (
                    Rows::Npy(&files.0 .0),
                    &files.0 .1[..],
                    Rows::Npy(&files.1 .0),
                    &files.1 .1[..],
                )
            }
        };
    // Fail early, naming the file, if the widths do not fit the projector.
    if let Some(want) = plain.d_in().or(iso.d_in()) {
        for r in [&train, &test] {
            if r.cols() != want {
                return Err(Error::Shape(format!(
                    "{}: rows have {} dims, but the projector expects {} of {want} dims",
                    r.name(),
                    r.cols(),
                    kind.name()
                )));
            }
        }
    }
    let means = ClassMeans::compute(train, train_labels)?;
    let backend = eval_backend()?;
    let clip = ncm(backend.as_ref(), &means, test, test_labels, &plain, kind)?;
    let isoclip = ncm(backend.as_ref(), &means, test, test_labels, &iso, kind)?;
    let seconds = t0.elapsed().as_secs_f64();
    if a.json {
        let v = json!({
            "synthetic": header.synthetic,
            "projector": header.projector,
            "modality": maps.modality.name(),
            "k_top": maps.band.k_top,
            "k_bottom": maps.band.k_bottom,
            "m": maps.m,
            "input_kind": kind.name(),
            "task": "ncm",
            "train_rows": train.rows(),
            "clip": clip,
            "isoclip": isoclip,
            "delta": { "accuracy": isoclip.accuracy - clip.accuracy },
            "seconds": seconds,
        });
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(());
    }
    header.print()?;
    outln!(
        "data:      NCM: {} training rows ({} classes, {}), {} test rows ({})",
        train.rows(),
        clip.classes,
        train.name(),
        clip.test_rows,
        test.name()
    )?;
    outln!()?;
    outln!("{:<16} {:>8} {:>8} {:>8}", "metric", "CLIP", "IsoCLIP", "Δ")?;
    print_ncm_row(&clip, &isoclip)?;
    outln!("class means of unnormalised rows, projected and L2-normalised; nearest by cosine; ties -> smallest label.")?;
    if clip.unseen_test_labels > 0 {
        outln!(
            "note: {} test rows have a label absent from the training set (always counted wrong).",
            clip.unseen_test_labels
        )?;
    }
    outln!("({seconds:.2} s)")?;
    Ok(())
}

fn print_ncm_row(c: &NcmResult, i: &NcmResult) -> Result<()> {
    outln!(
        "{:<16} {:>8.2} {:>8.2} {:>+8.2}",
        "NCM top-1 acc.",
        c.accuracy,
        i.accuracy,
        i.accuracy - c.accuracy
    )
}
