//! The command line's spellings of the library's enums. Arguments parse straight into the
//! library types (`InputKind`, `Modality`, `OutputForm`, `ElemType`, `NonFinitePolicy`,
//! `DeviceChoice`), so there is one type per concept and clap stays in `cli/`: each function
//! returns a typed clap value parser whose possible values carry the help text of the flag that
//! uses it (two commands may describe the same value differently).

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use isoclip::align::Modality;
use isoclip::backend::{DeviceChoice, ElemType, InputKind, NonFinitePolicy, OutputForm, Precision};

/// A parser accepting exactly the names of `values`, returning the value paired with the name.
/// Bad values get clap's usual error listing the possible values.
fn choice<T>(values: Vec<(PossibleValue, T)>) -> impl TypedValueParser<Value = T>
where
    T: Clone + Send + Sync + 'static,
{
    let names: Vec<PossibleValue> = values.iter().map(|(p, _)| p.clone()).collect();
    PossibleValuesParser::new(names).map(move |name: String| {
        values
            .iter()
            .find(|(p, _)| p.get_name() == name)
            .map(|(_, v)| v.clone())
            .expect("clap accepted one of the possible values")
    })
}

fn value(name: &'static str) -> PossibleValue {
    PossibleValue::new(name)
}

/// `features|embeddings`, each described by the command.
pub fn input_kind(
    features_help: &'static str,
    embeddings_help: &'static str,
) -> impl TypedValueParser<Value = InputKind> {
    choice(vec![
        (value("features").help(features_help), InputKind::Features),
        (
            value("embeddings").help(embeddings_help),
            InputKind::Embeddings,
        ),
    ])
}

/// `image|text`.
pub fn modality() -> impl TypedValueParser<Value = Modality> {
    choice(vec![
        (value("image"), Modality::Image),
        (value("text"), Modality::Text),
    ])
}

/// `image|text|both`: the modalities `fit` computes maps for.
pub fn modalities() -> impl TypedValueParser<Value = &'static [Modality]> {
    const BOTH: &[Modality] = &[Modality::Image, Modality::Text];
    choice(vec![
        (value("image"), &BOTH[..1]),
        (value("text"), &BOTH[1..]),
        (value("both"), BOTH),
    ])
}

/// `compact|full`.
pub fn output_form() -> impl TypedValueParser<Value = OutputForm> {
    choice(vec![
        (
            value("compact").help(
                "m = r − k_top − k_bottom dims, identical cosines (e.g. 262 for ViT-B/16 images)",
            ),
            OutputForm::Compact,
        ),
        (
            value("full").help("d dims, the paper's map"),
            OutputForm::Full,
        ),
    ])
}

/// `f16|f32`.
pub fn elem_type() -> impl TypedValueParser<Value = ElemType> {
    choice(vec![
        (value("f16"), ElemType::F16),
        (value("f32"), ElemType::F32),
    ])
}

/// `error|zero`.
pub fn nonfinite_policy() -> impl TypedValueParser<Value = NonFinitePolicy> {
    choice(vec![
        (
            value("error").help("Stop with an error naming the shard and row"),
            NonFinitePolicy::Error,
        ),
        (
            value("zero").help("Write a zero row and count it in the summary"),
            NonFinitePolicy::Zero,
        ),
    ])
}

/// `f32|bf16`.
pub fn precision() -> impl TypedValueParser<Value = Precision> {
    choice(vec![
        (
            value("f32").help("f32 inputs, weights and sums (the reference)"),
            Precision::F32,
        ),
        (
            value("bf16").help(
                "inputs and weights rounded to bf16, f32 sums: about 2x faster on a CPU with \
                 AVX-512 BF16 (cosines move by up to ~1e-3); an error on other CPUs and on GPUs",
            ),
            Precision::Bf16,
        ),
    ])
}

/// `auto|cpu|cuda|cuda:N` (the library also reads "gpu" and "gpu:N"; the command line never
/// offered them).
pub fn device(s: &str) -> Result<DeviceChoice, String> {
    if s.starts_with("gpu") {
        return Err(format!("unknown device '{s}' (auto, cpu, cuda or cuda:N)"));
    }
    s.parse::<DeviceChoice>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn parse<T: Clone + Send + Sync + 'static>(
        parser: impl TypedValueParser<Value = T>,
        args: &[&str],
    ) -> Result<T, clap::Error> {
        Command::new("t")
            .arg(Arg::new("x").long("x").value_parser(parser))
            .try_get_matches_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|m| m.get_one::<T>("x").expect("given").clone())
    }

    #[test]
    fn spellings_map_to_the_library_values() {
        let kind = || input_kind("a", "b");
        assert_eq!(
            parse(kind(), &["--x", "features"]).unwrap(),
            InputKind::Features
        );
        assert_eq!(
            parse(kind(), &["--x", "embeddings"]).unwrap(),
            InputKind::Embeddings
        );
        assert_eq!(parse(modality(), &["--x", "text"]).unwrap(), Modality::Text);
        assert_eq!(
            parse(precision(), &["--x", "bf16"]).unwrap(),
            Precision::Bf16
        );
        assert_eq!(parse(precision(), &["--x", "f32"]).unwrap(), Precision::F32);
        assert!(parse(precision(), &["--x", "fp16"]).is_err());
        assert_eq!(
            parse(modalities(), &["--x", "both"]).unwrap(),
            &[Modality::Image, Modality::Text][..]
        );
        assert_eq!(
            parse(modalities(), &["--x", "image"]).unwrap(),
            &[Modality::Image][..]
        );
        assert_eq!(
            parse(modalities(), &["--x", "text"]).unwrap(),
            &[Modality::Text][..]
        );
        assert_eq!(
            parse(output_form(), &["--x", "full"]).unwrap(),
            OutputForm::Full
        );
        assert_eq!(parse(elem_type(), &["--x", "f32"]).unwrap(), ElemType::F32);
        assert_eq!(
            parse(nonfinite_policy(), &["--x", "zero"]).unwrap(),
            NonFinitePolicy::Zero
        );
        assert_eq!(
            parse(device, &["--x", "cuda"]).unwrap(),
            DeviceChoice::Cuda(None)
        );
        assert_eq!(
            parse(device, &["--x", "cuda:1"]).unwrap(),
            DeviceChoice::Cuda(Some(1))
        );
    }

    #[test]
    fn a_bad_value_lists_the_possible_ones() {
        let err = parse(modality(), &["--x", "both"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        let text = err.to_string();
        assert!(
            text.contains("invalid value 'both'")
                && text.contains("[possible values: image, text]"),
            "{text}"
        );
        // The library's extra spelling is not a command-line one.
        assert!(parse(device, &["--x", "gpu"]).is_err());
    }
}
