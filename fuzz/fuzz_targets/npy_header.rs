//! `.npy` headers: the header parser, and opening a matrix and a bias vector from the bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.npy");
    if let Ok(h) = isoclip::formats::npy::parse_header(data, path) {
        // Whatever parses must have exact sizes.
        let _ = h.data_end();
    }
    let _ = isoclip::formats::npy::header_total_len(data, path);
    isoclip_fuzz::with_file(data, |p| {
        let _ = isoclip::formats::npy::NpyMatrix::open(p, isoclip::formats::npy::Accept::Weights)
            .map(|m| m.to_f64());
        let _ = isoclip::formats::checkpoint::load_npy_vector(p);
    });
});
