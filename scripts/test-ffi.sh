#!/usr/bin/env bash
# The C ABI, tested from C, C++ and Go against the freshly built library (shared and static):
#   - C tests (tests/c/), -std=c11 -Wall -Wextra -Werror, natively and under valgrind
#     (--leak-check=full, any leak or invalid access fails), linked against libisoclip.so and
#     libisoclip.a; the 8-thread stress test natively at full size and under valgrind small;
#     test_abi (the ABI 1.0 additions: fork, cancellation, stats, matrices, ...); test_scale_out
#     (jobs over URLs, shard selection, storage options, two workers into one output);
#   - the soname (libisoclip.so.ABI_MAJOR), and scripts/install.sh into a temporary prefix with
#     the README's C example built against the install through pkg-config;
#   - the C++ wrapper's tests (bindings/cpp/tests/, two translation units), also under valgrind;
#   - the Go package's tests (bindings/go/) with -race, and its example;
#   - the README examples (bindings/examples/), built through the generated pkg-config files, and
#     a check that the README quotes them verbatim.
# Installs what is missing (gcc, g++, valgrind, pkg-config, golang-go, python3) with apt.
# Prints "N passed, M failed" and exits non-zero on any failure. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# ---- tools -------------------------------------------------------------------------------------
missing=()
command -v gcc >/dev/null || missing+=(gcc)
command -v g++ >/dev/null || missing+=(g++)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v readelf >/dev/null || missing+=(binutils)
command -v go >/dev/null || missing+=(golang-go)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- the library -------------------------------------------------------------------------------
echo "building libisoclip (debug) and the isoclip command line"
cargo build --quiet --lib --bin isoclip
BUILT=$ROOT/target/debug
OUT=$ROOT/target/ffi-tests
rm -rf "$OUT"
mkdir -p "$OUT/pkgconfig" "$OUT/work" "$OUT/lib"

# The build tree as an install would lay it out: programs linked with -lisoclip load the soname,
# libisoclip.so.MAJOR, which cargo does not create.
ABI_MAJOR=$(sed -n 's/^pub const ISOCLIP_ABI_VERSION_MAJOR: u32 = \([0-9][0-9]*\);$/\1/p' src/ffi/version.rs)
SONAME=libisoclip.so.$ABI_MAJOR
LIBDIR=$OUT/lib
ln -s "$BUILT/libisoclip.so" "$LIBDIR/$SONAME"
ln -s "$SONAME" "$LIBDIR/libisoclip.so"
ln -s "$BUILT/libisoclip.a" "$LIBDIR/libisoclip.a"

# pkg-config files for the build tree, from the templates.
VERSION=$(sed -n 's/^#define ISOCLIP_VERSION_STRING "\(.*\)"$/\1/p' include/isoclip.h)
for pc in isoclip isoclip-static; do
  sed -e "s|@PREFIX@|$ROOT|" -e "s|@INCLUDEDIR@|$ROOT/include|" -e "s|@LIBDIR@|$LIBDIR|" \
    -e "s|@VERSION@|$VERSION|" "bindings/pkgconfig/$pc.pc.in" >"$OUT/pkgconfig/$pc.pc"
done
export PKG_CONFIG_PATH=$OUT/pkgconfig
export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
SHARED="$(pkg-config --cflags --libs isoclip)"
STATIC="$(pkg-config --cflags --libs isoclip-static)"

# A projector file of the built-in synthetic model (image, 768 -> 262 compact / 512 full).
(cd "$OUT/work" && "$BUILT/isoclip" fit -o p.st >/dev/null 2>&1)
PROJECTOR=$OUT/work/p.st

# ---- running -----------------------------------------------------------------------------------
passed=0
failed=0
failures=()
record() { # name status log
  if [ "$2" -eq 0 ]; then
    passed=$((passed + 1))
    printf '  ok    %s\n' "$1"
  else
    failed=$((failed + 1))
    failures+=("$1")
    printf '  FAIL  %s (exit %s)\n' "$1" "$2"
    tail -n 40 "$3" | sed 's/^/        /'
  fi
}
check() { # name command...
  local name=$1 log
  shift
  log="$OUT/$(echo "$name" | tr -c 'a-zA-Z0-9_.-' '_').log"
  local status=0
  "$@" >"$log" 2>&1 || status=$?
  record "$name" "$status" "$log"
}

VALGRIND=(valgrind -q --error-exitcode=99 --leak-check=full
  --errors-for-leak-kinds=definite,indirect,possible --show-leak-kinds=definite,indirect,possible
  --suppressions="$ROOT/tests/c/valgrind.supp")
CFLAGS=(-std=c11 -Wall -Wextra -Werror -g -O1)
CXXFLAGS=(-std=c++17 -Wall -Wextra -Werror -pedantic -g -O1 -I"$ROOT/bindings/cpp")

echo "C"
# shellcheck disable=SC2086 # pkg-config output is a list of flags
{
  check "compile test_api (shared)" gcc "${CFLAGS[@]}" tests/c/test_api.c -o "$OUT/test_api_shared" $SHARED -lpthread -lm
  check "compile test_api (static)" gcc "${CFLAGS[@]}" tests/c/test_api.c -o "$OUT/test_api_static" $STATIC -lpthread -lm
  check "compile test_stress (shared)" gcc "${CFLAGS[@]}" tests/c/test_stress.c -o "$OUT/test_stress_shared" $SHARED -lpthread -lm
  check "compile test_stress (static)" gcc "${CFLAGS[@]}" tests/c/test_stress.c -o "$OUT/test_stress_static" $STATIC -lpthread -lm
  check "compile test_abi (shared)" gcc "${CFLAGS[@]}" tests/c/test_abi.c -o "$OUT/test_abi_shared" $SHARED -lpthread -lm
  check "compile test_abi (static)" gcc "${CFLAGS[@]}" tests/c/test_abi.c -o "$OUT/test_abi_static" $STATIC -lpthread -lm
  check "compile test_scale_out (shared)" gcc "${CFLAGS[@]}" tests/c/test_scale_out.c -o "$OUT/test_scale_out_shared" $SHARED -lpthread -lm
  check "compile test_scale_out (static)" gcc "${CFLAGS[@]}" tests/c/test_scale_out.c -o "$OUT/test_scale_out_static" $STATIC -lpthread -lm
}
check "test_api (static is self-contained)" bash -c "! ldd '$OUT/test_api_static' | grep -q libisoclip"
for kind in shared static; do
  check "test_api ($kind)" "$OUT/test_api_$kind" "$PROJECTOR" "$BUILT/isoclip"
  check "test_stress 8 threads ($kind)" "$OUT/test_stress_$kind" "$PROJECTOR"
  check "test_abi ($kind)" "$OUT/test_abi_$kind" "$PROJECTOR"
  check "test_scale_out ($kind)" "$OUT/test_scale_out_$kind" "$PROJECTOR"
done
check "the shared library's soname is $SONAME" bash -c \
  "readelf -d '$BUILT/libisoclip.so' | grep -F 'Library soname: [$SONAME]'"
check "programs linked with -lisoclip load $SONAME" bash -c \
  "readelf -d '$OUT/test_api_shared' | grep -F 'Shared library: [$SONAME]'"

echo "install (scripts/install.sh into a temporary prefix)"
PREFIX=$OUT/prefix
check "scripts/install.sh PREFIX dev" bash scripts/install.sh "$PREFIX" dev
check "installed: header, $SONAME.x.y with its links, the .a, pkg-config files" bash -c "
  set -e; cd '$PREFIX'
  test -f include/isoclip.h && test -f lib/libisoclip.a
  test \"\$(readlink lib/libisoclip.so)\" = $SONAME
  real=\$(readlink lib/$SONAME); case \$real in $SONAME.*.*) ;; *) exit 1 ;; esac
  test -f lib/\$real && ! test -L lib/\$real
  readelf -d lib/\$real | grep -F 'Library soname: [$SONAME]'
  ! readelf -S lib/\$real | grep -E '\\.(symtab|debug_info)'
  grep -Fx 'prefix=$PREFIX' lib/pkgconfig/isoclip.pc && grep -Fx 'libdir=$PREFIX/lib' lib/pkgconfig/isoclip-static.pc"
# shellcheck disable=SC2046 # pkg-config output is a list of flags
check "compile example.c against the install (pkg-config isoclip)" bash -c \
  "PKG_CONFIG_PATH='$PREFIX/lib/pkgconfig' gcc -std=c11 -Wall -Wextra -Werror bindings/examples/example.c \
   -o '$OUT/example_installed' \$(PKG_CONFIG_PATH='$PREFIX/lib/pkgconfig' pkg-config --cflags --libs isoclip)"
check "example.c runs on the installed $SONAME" bash -c \
  "LD_LIBRARY_PATH='$PREFIX/lib' ldd '$OUT/example_installed' | grep -F '$SONAME => $PREFIX/lib/$SONAME' &&
   LD_LIBRARY_PATH='$PREFIX/lib' '$OUT/example_installed' '$PROJECTOR'"
check "compile example.c against the install (pkg-config isoclip-static)" bash -c \
  "gcc -std=c11 -Wall -Wextra -Werror bindings/examples/example.c -o '$OUT/example_installed_static' \
   \$(PKG_CONFIG_PATH='$PREFIX/lib/pkgconfig' pkg-config --cflags --libs isoclip-static) &&
   '$OUT/example_installed_static' '$PROJECTOR'"

echo "C++"
# shellcheck disable=SC2086
check "compile C++ tests (two translation units)" g++ "${CXXFLAGS[@]}" \
  bindings/cpp/tests/test_main.cpp bindings/cpp/tests/test_second_tu.cpp -o "$OUT/test_cpp" $SHARED -lpthread
check "test_cpp" "$OUT/test_cpp" "$PROJECTOR"

echo "examples"
check "README excerpts are verbatim parts of the example files" python3 tests/c/readme_excerpts.py
# shellcheck disable=SC2086
{
  check "compile example.c (pkg-config isoclip)" gcc "${CFLAGS[@]}" bindings/examples/example.c -o "$OUT/example_c" $SHARED
  check "compile example.c (pkg-config isoclip-static)" gcc "${CFLAGS[@]}" bindings/examples/example.c -o "$OUT/example_c_static" $STATIC
  check "compile example.cpp" g++ "${CXXFLAGS[@]}" bindings/examples/example.cpp -o "$OUT/example_cpp" $SHARED
}
check "example.c" "$OUT/example_c" "$PROJECTOR"
check "example.c (static)" "$OUT/example_c_static" "$PROJECTOR"
check "example.cpp" "$OUT/example_cpp" "$PROJECTOR"

echo "valgrind (leaks and invalid accesses, every error path)"
# Valgrind runs one thread at a time: run the programs side by side, the stress test small.
vg_names=("valgrind test_api (shared)" "valgrind test_api (static)" "valgrind test_stress (shared)"
  "valgrind test_stress (static)" "valgrind test_cpp" "valgrind example.c"
  "valgrind test_abi (shared)" "valgrind test_abi (static)" "valgrind test_scale_out (shared)")
vg_cmds=("$OUT/test_api_shared $PROJECTOR $BUILT/isoclip" "$OUT/test_api_static $PROJECTOR $BUILT/isoclip"
  "$OUT/test_stress_shared $PROJECTOR 40 1" "$OUT/test_stress_static $PROJECTOR 40 1"
  "$OUT/test_cpp $PROJECTOR" "$OUT/example_c $PROJECTOR"
  "$OUT/test_abi_shared $PROJECTOR" "$OUT/test_abi_static $PROJECTOR"
  "$OUT/test_scale_out_shared $PROJECTOR")
jobs_max=$(nproc)
pids=()
for i in "${!vg_names[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 0.2; done
  # shellcheck disable=SC2086 # the command is a list of words
  ("${VALGRIND[@]}" ${vg_cmds[$i]} >"$OUT/vg_$i.log" 2>&1) &
  pids[$i]=$!
done
for i in "${!vg_names[@]}"; do
  status=0
  wait "${pids[$i]}" || status=$?
  record "${vg_names[$i]}" "$status" "$OUT/vg_$i.log"
done

echo "Go ($(go version | cut -d' ' -f3))"
export ISOCLIP_PROJECTOR=$PROJECTOR
export GOFLAGS=-mod=mod
if [ -z "${HOME:-}" ]; then # go needs somewhere to cache builds
  export GOCACHE=$ROOT/target/go-build GOPATH=$ROOT/target/go-path
fi
check "go vet" bash -c "cd bindings/go && go vet ./..."
check "go test -race (with GODEBUG=cgocheck=2)" bash -c \
  "cd bindings/go && GODEBUG=cgocheck=2 go test -race -count=1 ./..."

echo
if [ "$failed" -gt 0 ]; then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "ffi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
