//! The output directory's manifest (`isoclip-manifest.json`): the parser, on arbitrary bytes, and
//! a round trip of whatever it accepts.
#![no_main]

use std::path::Path;

use isoclip::engine::manifest::OutputManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("isoclip-manifest.json");
    if let Ok(m) = OutputManifest::parse(data, path) {
        let text = serde_json::to_vec(&m).expect("a parsed manifest serialises");
        let again = OutputManifest::parse(&text, path).expect("a serialised manifest parses");
        assert_eq!(
            serde_json::to_vec(&again).unwrap(),
            text,
            "parse -> serialise is a fixed point"
        );
    }
});
