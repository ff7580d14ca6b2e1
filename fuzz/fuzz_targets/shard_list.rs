//! Shard lists (`isoclip project --input list.txt`): the pure parser, on arbitrary bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(shards) = isoclip::engine::shards::parse_shard_list(text, Path::new("/base")) {
            // Whatever parses names at least one shard, each under the base or absolute.
            assert!(!shards.is_empty());
            assert!(shards.iter().all(|p| p.is_absolute()));
        }
    }
});
