//! Loading projector weights: safetensors checkpoints (OpenAI/OpenCLIP or Hugging Face names) or a
//! pair of `.npy` files. Checkpoints are memory-mapped and only the projector tensors are read, so
//! a multi-GB checkpoint costs a few MB of I/O.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::align::ProjectorWeights;
use crate::error::{Error, Result};
use crate::formats::npy::{Accept, NpyMatrix};
use crate::formats::read::{
    check_safetensors_bytes, open_regular, read_safetensors_header, SafetensorsLimits,
};

/// How a tensor is laid out in the file relative to our "input x output" convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `input x output` (OpenAI/OpenCLIP `visual.proj`, `text_projection`).
    InOut,
    /// `output x input` (Hugging Face `nn.Linear.weight`).
    OutIn,
}

/// Name conventions we recognise, in the order we try them.
struct NameScheme {
    family: &'static str,
    image: &'static str,
    text: &'static str,
    image_bias: Option<&'static str>,
    text_bias: Option<&'static str>,
    layout: Layout,
}

const SCHEMES: &[NameScheme] = &[
    NameScheme {
        family: "openai/openclip",
        image: "visual.proj",
        text: "text_projection",
        image_bias: None,
        text_bias: None,
        layout: Layout::InOut,
    },
    NameScheme {
        family: "huggingface",
        image: "visual_projection.weight",
        text: "text_projection.weight",
        image_bias: Some("visual_projection.bias"),
        text_bias: Some("text_projection.bias"),
        layout: Layout::OutIn,
    },
];

/// Finds a tensor whose name is `wanted` or ends with `.wanted` (checkpoints saved from wrappers
/// prefix names, e.g. `model.visual.proj` or `module.text_projection`). Exact names win; an
/// ambiguous suffix match is an error rather than a guess.
fn find_name<'a>(names: &[&'a str], wanted: &str, path: &Path) -> Result<Option<&'a str>> {
    if let Some(n) = names.iter().find(|n| **n == wanted) {
        return Ok(Some(n));
    }
    let suffix = format!(".{wanted}");
    let hits: Vec<&&str> = names.iter().filter(|n| n.ends_with(&suffix)).collect();
    match hits.len() {
        0 => Ok(None),
        1 => Ok(Some(hits[0])),
        _ => Err(Error::TensorNotFound {
            path: path.to_path_buf(),
            message: format!(
                "several tensors match '{wanted}': {}; keep one model per checkpoint",
                hits.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

fn tensor_to_f64(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<Vec<f64>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        other => {
            return Err(Error::unsupported(
                path,
                format!(
                    "tensor '{name}' has dtype {other:?}; supported are F32, F16, BF16 and F64"
                ),
            ))
        }
    })
}

/// A matrix read from a checkpoint, already in "input x output" orientation.
struct LoadedMatrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

fn read_matrix(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
    layout: Layout,
) -> Result<LoadedMatrix> {
    let view = st
        .tensor(name)
        .map_err(|e| Error::format(path, format!("cannot read tensor '{name}': {e}")))?;
    let shape = view.shape().to_vec();
    if shape.len() != 2 {
        return Err(Error::Shape(format!(
            "{}: tensor '{name}' has shape {shape:?}; a 2-D projector matrix is required",
            path.display()
        )));
    }
    let raw = tensor_to_f64(path, name, &view)?;
    Ok(match layout {
        Layout::InOut => LoadedMatrix {
            rows: shape[0],
            cols: shape[1],
            data: raw,
        },
        Layout::OutIn => {
            let (out, inp) = (shape[0], shape[1]);
            let mut t = vec![0.0; raw.len()];
            for o in 0..out {
                for i in 0..inp {
                    t[i * out + o] = raw[o * inp + i];
                }
            }
            LoadedMatrix {
                rows: inp,
                cols: out,
                data: t,
            }
        }
    })
}

fn read_vector(path: &Path, st: &SafeTensors<'_>, name: &str) -> Result<Vec<f64>> {
    let view = st
        .tensor(name)
        .map_err(|e| Error::format(path, format!("cannot read tensor '{name}': {e}")))?;
    if view.shape().len() != 1 {
        return Err(Error::Shape(format!(
            "{}: bias '{name}' has shape {:?}; a 1-D vector is required",
            path.display(),
            view.shape()
        )));
    }
    tensor_to_f64(path, name, &view)
}

/// Caps on a checkpoint's safetensors header. Real CLIP checkpoints have a few hundred to a few
/// thousand tensors and headers well under 1 MB; these leave a wide margin.
pub const CHECKPOINT_LIMITS: SafetensorsLimits = SafetensorsLimits {
    what: "a readable checkpoint",
    max_header_bytes: 16 << 20,
    max_tensors: 65_536,
};

/// Loads the image and text projectors from a safetensors checkpoint. The header is checked
/// (size and tensor count against [`CHECKPOINT_LIMITS`]) before the file is mapped; of the data,
/// only the projector tensors are read.
pub fn load_safetensors(path: &Path) -> Result<ProjectorWeights> {
    let (file, len) = open_regular(path)?;
    let mut magic = [0u8; 2];
    if len >= 2 {
        file.read_exact_at(&mut magic, 0)
            .map_err(|e| Error::io(path, e))?;
        refuse_zip(&magic, path)?;
    }
    read_safetensors_header(&file, len, path, CHECKPOINT_LIMITS)?;
    // SAFETY: read-only mapping of a file we do not modify; see NpyMatrix::open.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    load_safetensors_bytes(&mmap, path)
}

fn refuse_zip(bytes: &[u8], path: &Path) -> Result<()> {
    if bytes.starts_with(&[0x50, 0x4b]) {
        return Err(Error::unsupported(
            path,
            "this is a PyTorch zip checkpoint (.pt/.bin); convert it to safetensors first \
             (safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))",
        ));
    }
    Ok(())
}

/// [`load_safetensors`] on a checkpoint already in memory (`path` names it in messages).
pub fn load_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<ProjectorWeights> {
    refuse_zip(bytes, path)?;
    check_safetensors_bytes(bytes, path, CHECKPOINT_LIMITS)?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))?;
    let mut names = st.names();
    names.sort_unstable();

    for scheme in SCHEMES {
        let image = find_name(&names, scheme.image, path)?;
        let text = find_name(&names, scheme.text, path)?;
        let (Some(image), Some(text)) = (image, text) else {
            continue;
        };
        let img = read_matrix(path, &st, image, scheme.layout)?;
        let txt = read_matrix(path, &st, text, scheme.layout)?;
        let image_bias = match scheme.image_bias {
            Some(b) => match find_name(&names, b, path)? {
                Some(n) => Some(read_vector(path, &st, n)?),
                None => None,
            },
            None => None,
        };
        let text_bias = match scheme.text_bias {
            Some(b) => match find_name(&names, b, path)? {
                Some(n) => Some(read_vector(path, &st, n)?),
                None => None,
            },
            None => None,
        };
        let source = format!(
            "{} ({} names: '{image}', '{text}')",
            path.display(),
            scheme.family
        );
        return ProjectorWeights::new(
            (img.rows, img.cols, img.data),
            (txt.rows, txt.cols, txt.data),
            image_bias,
            text_bias,
            source,
        )
        .map_err(|e| with_path(e, path));
    }

    let listed: Vec<String> = names.iter().take(40).map(|s| s.to_string()).collect();
    let more = if names.len() > 40 {
        format!(" ... and {} more", names.len() - 40)
    } else {
        String::new()
    };
    Err(Error::TensorNotFound {
        path: path.to_path_buf(),
        message: format!(
            "no projector tensors found: expected 'visual.proj' + 'text_projection' \
             (OpenAI/OpenCLIP) or 'visual_projection.weight' + 'text_projection.weight' \
             (Hugging Face); the file has {} tensors: {}{more}",
            names.len(),
            if listed.is_empty() {
                "(none)".to_string()
            } else {
                listed.join(", ")
            }
        ),
    })
}

/// Loads projectors from two `.npy` files in "input x output" orientation, with optional 1-D
/// bias files.
pub fn load_npy_pair(
    image: &Path,
    text: &Path,
    image_bias: Option<&Path>,
    text_bias: Option<&Path>,
) -> Result<ProjectorWeights> {
    let img = NpyMatrix::open(image, Accept::Weights)?;
    let txt = NpyMatrix::open(text, Accept::Weights)?;
    let read_bias = |p: &Path| -> Result<Vec<f64>> { load_npy_vector(p) };
    let ib = image_bias.map(read_bias).transpose()?;
    let tb = text_bias.map(read_bias).transpose()?;
    let source = format!("{} + {}", image.display(), text.display());
    ProjectorWeights::new(
        (img.rows, img.cols, img.to_f64()),
        (txt.rows, txt.cols, txt.to_f64()),
        ib,
        tb,
        source,
    )
    .map_err(|e| match e {
        // Name the file that holds the bad values.
        Error::NonFinite(m) if m.starts_with("image") => Error::format(image, m),
        Error::NonFinite(m) if m.starts_with("text") => Error::format(text, m),
        other => other,
    })
}

/// Reads a 1-D float `.npy` vector (a bias): only the header, then exactly the bytes it
/// promises (checked against the file's size first, so a lying header cannot make us allocate).
pub fn load_npy_vector(path: &Path) -> Result<Vec<f64>> {
    let (file, len) = open_regular(path)?;
    let h = crate::formats::npy::read_header(&file, len, path)?;
    let dtype = h.dtype.filter(|d| d.is_float()).ok_or_else(|| {
        Error::unsupported(
            path,
            format!(
                "dtype '{}' is not supported for a bias: {} (expected '<f2', '<f4' or '<f8')",
                h.descr,
                match h.dtype {
                    Some(_) => "it is not a float type",
                    None => crate::formats::npy::unsupported_dtype_reason(&h.descr),
                }
            ),
        )
    })?;
    let n = match h.shape.as_slice() {
        [n] => *n,
        [1, n] => *n,
        s => {
            return Err(Error::Shape(format!(
                "{}: bias has shape {s:?}; a 1-D vector is required",
                path.display()
            )))
        }
    };
    // parse_header refused shapes whose byte size overflows, so data_end is exact.
    let need = h
        .data_end()
        .ok_or_else(|| Error::format(path, "shape overflows"))?;
    if len < need as u64 {
        return Err(Error::format(
            path,
            format!("file is truncated: header promises {n} values ({need} bytes) but the file has {len} bytes"),
        ));
    }
    let mut data = vec![0u8; need - h.data_offset];
    file.read_exact_at(&mut data, h.data_offset as u64)
        .map_err(|e| Error::io(path, e))?;
    Ok(crate::formats::npy::bytes_to_f64(&data, dtype))
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::NonFinite(m) | Error::Shape(m) => Error::Format {
            path: PathBuf::from(path),
            message: m,
        },
        other => other,
    }
}
