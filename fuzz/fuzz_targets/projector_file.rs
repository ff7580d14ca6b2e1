//! Projector files: the loader and verifier on arbitrary bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = isoclip::formats::projector_file::from_bytes(data, Path::new("fuzz.safetensors"));
});
