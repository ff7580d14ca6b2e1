#!/usr/bin/env bash
# Installs the C library under a prefix:
#   PREFIX/include/isoclip.h
#   PREFIX/lib/libisoclip.so.A.B.P   the shared library, stripped (A.B: the ABI version from
#                                    src/ffi/version.rs; P: the library's patch version)
#   PREFIX/lib/libisoclip.so.A       -> libisoclip.so.A.B.P (the soname: what programs load)
#   PREFIX/lib/libisoclip.so         -> libisoclip.so.A     (what `-lisoclip` links)
#   PREFIX/lib/libisoclip.a          the static library, debug info stripped
#   PREFIX/lib/pkgconfig/isoclip.pc, isoclip-static.pc   from bindings/pkgconfig/*.pc.in
#
# Usage: scripts/install.sh PREFIX [PROFILE]
#   PROFILE  the Cargo profile to build and install: dist (the default: release with LTO, no
#            debug info, stripped), release, or dev (the debug build, for tests).
# Run from anywhere. Needs cargo, and strip (binutils) for the stripping.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [dist|release|dev]" >&2
  exit 2
fi
PREFIX=$1
PROFILE=${2:-dist}
case "$PROFILE" in
  dev) TARGET_DIR=debug ;;
  dist | release) TARGET_DIR=$PROFILE ;;
  *)
    echo "$0: unknown profile '$PROFILE' (dist, release or dev)" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/.."
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)

abi_constant() { # NAME -> its integer value in src/ffi/version.rs
  local value
  value=$(sed -n "s/^pub const $1: u32 = \([0-9][0-9]*\);\$/\1/p" src/ffi/version.rs)
  if [ -z "$value" ]; then
    echo "$0: src/ffi/version.rs does not define $1" >&2
    exit 1
  fi
  echo "$value"
}
ABI_MAJOR=$(abi_constant ISOCLIP_ABI_VERSION_MAJOR)
ABI_MINOR=$(abi_constant ISOCLIP_ABI_VERSION_MINOR)
VERSION=$(sed -n 's/^#define ISOCLIP_VERSION_STRING "\(.*\)"$/\1/p' include/isoclip.h)
PATCH=${VERSION##*.}
SONAME=libisoclip.so.$ABI_MAJOR
REAL=$SONAME.$ABI_MINOR.$PATCH

cargo build --quiet --lib --profile "$PROFILE"
BUILT=target/$TARGET_DIR

install -d "$PREFIX/include" "$PREFIX/lib/pkgconfig"
install -m644 include/isoclip.h "$PREFIX/include/isoclip.h"
install -m755 "$BUILT/libisoclip.so" "$PREFIX/lib/$REAL"
install -m644 "$BUILT/libisoclip.a" "$PREFIX/lib/libisoclip.a"
if command -v strip >/dev/null; then
  strip --strip-unneeded "$PREFIX/lib/$REAL"
  strip --strip-debug "$PREFIX/lib/libisoclip.a"
else
  echo "$0: strip not found: installing unstripped libraries" >&2
fi
ln -sfn "$REAL" "$PREFIX/lib/$SONAME"
ln -sfn "$SONAME" "$PREFIX/lib/libisoclip.so"

for pc in isoclip isoclip-static; do
  sed -e "s|@PREFIX@|$PREFIX|" -e "s|@INCLUDEDIR@|$PREFIX/include|" -e "s|@LIBDIR@|$PREFIX/lib|" \
    -e "s|@VERSION@|$VERSION|" "bindings/pkgconfig/$pc.pc.in" >"$PREFIX/lib/pkgconfig/$pc.pc"
  chmod 644 "$PREFIX/lib/pkgconfig/$pc.pc"
done
echo "installed libisoclip $VERSION (ABI $ABI_MAJOR.$ABI_MINOR, soname $SONAME) under $PREFIX"
