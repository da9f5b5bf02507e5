#!/usr/bin/env bash
# KenLM's lmplz (estimates an ARPA n-gram model from text) and build_binary (ARPA -> a compact, fast-loading
# binary), which `python -m proslushka.lm build` runs. No Debian package ships them and the PyPI `kenlm` wheel is
# the query module only, but its source archive holds all of KenLM: this builds the two programs from it with
# CMake, against Debian's boost, zlib, bz2 and lzma (about 2 minutes on 2 cores). Orders up to 6.
# usage: tools/build_kenlm.sh [out_dir]        (default: build/kenlm; prints where the programs are)
set -euo pipefail
out=$(realpath -m "${1:-build/kenlm}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! dpkg -s libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev \
    libbz2-dev liblzma-dev >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends cmake g++ make libboost-program-options-dev libboost-system-dev \
        libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev >/dev/null
fi
(cd "$work" && python3 -m pip download -q --no-deps --no-binary kenlm kenlm)
tar -xzf "$work"/kenlm-*.tar.gz -C "$work"
log="$work/build.log"  # the compiler's many deprecation warnings go here; shown only if the build fails
if ! { cmake -S "$work"/kenlm-*/ -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 &&
       cmake --build "$work/build" --target lmplz build_binary -j"$(nproc)"; } >"$log" 2>&1; then
    tail -30 "$log"
    exit 1
fi
mkdir -p "$out"
cp "$work"/build/bin/lmplz "$work"/build/bin/build_binary "$out"/
ls -la "$out"
