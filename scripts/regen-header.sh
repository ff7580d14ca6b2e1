#!/usr/bin/env bash
# Regenerates include/isoclip.h from src/ffi/ with the pinned cbindgen (a dev-dependency) and the
# version macros from Cargo.toml. The test suite (tests/c_header.rs) fails while the committed
# header differs from what this writes.
set -euo pipefail
cd "$(dirname "$0")/.."
ISOCLIP_REGEN_HEADER=1 cargo test --quiet --test c_header committed_header_is_up_to_date
cargo test --quiet --test c_header
echo "include/isoclip.h regenerated"
