//! Safetensors checkpoints: the projector-weight loader on arbitrary bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ =
        isoclip::formats::checkpoint::load_safetensors_bytes(data, Path::new("fuzz.safetensors"));
});
