#!/bin/bash -eu
# OSS-Fuzz / ClusterFuzzLite build script: builds every fuzz/fuzz_<name>.c into
# $OUT/fuzz_<name>, with beside it
#   fuzz_<name>_seed_corpus.zip   fuzz/corpus/<name>/ (when it exists)
#   fuzz_<name>.dict              fuzz/imp.dict
#   fuzz_<name>.options           max_len, timeout and dict for libFuzzer
#
# Uses the OSS-Fuzz variables: CC, CXX, CFLAGS, CXXFLAGS, LIB_FUZZING_ENGINE, OUT (required)
# and WORK (scratch; a temporary directory when unset). Objects are compiled with $CC $CFLAGS,
# binaries linked with $CXX $CXXFLAGS $LIB_FUZZING_ENGINE as OSS-Fuzz requires (libFuzzer is
# C++). Targets named fuzz_imd*.c drive the server core: they also get server/*.c except
# main.c and link -lsqlite3 -lsodium -levent -lpthread (so the build image needs
# libsqlite3-dev, libsodium-dev and libevent-dev; those libraries are not instrumented, which
# is fine for ASan/UBSan but not for MSan). ci/test-oss-fuzz runs this script locally.
cd "$(dirname "$0")/.."

: "${CC:=clang}"
: "${CXX:=clang++}"
: "${CFLAGS:=}"
: "${CXXFLAGS:=$CFLAGS}"
: "${LIB_FUZZING_ENGINE:=-fsanitize=fuzzer}"
: "${OUT:?OUT must name the output directory}"
if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi

obj=$WORK/imp-obj
rm -rf "$obj"
mkdir -p "$obj/protocol" "$obj/server" "$obj/fuzz" "$OUT"
# shellcheck disable=SC2086 # CFLAGS is a list of flags
cc() { $CC $CFLAGS -std=c11 -D_GNU_SOURCE -Iprotocol/include -Iprotocol -Iserver -c "$1" -o "$2"; }

jobs=$(nproc 2>/dev/null || echo 1)
pids=()
compile() { # compile SRC OBJ, up to $jobs at once
    cc "$1" "$2" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$jobs" ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
}
wait_all() {
    local p
    for p in "${pids[@]}"; do wait "$p"; done
    pids=()
}

lib_obj=() srv_obj=()
for f in protocol/*.c; do
    o=$obj/protocol/$(basename "${f%.c}").o
    compile "$f" "$o"
    lib_obj+=("$o")
done
for f in server/*.c; do
    [ "$f" = server/main.c ] && continue
    o=$obj/server/$(basename "${f%.c}").o
    compile "$f" "$o"
    srv_obj+=("$o")
done
for f in fuzz/fuzz_*.c; do
    compile "$f" "$obj/fuzz/$(basename "${f%.c}").o"
done
wait_all

for f in fuzz/fuzz_*.c; do
    target=$(basename "${f%.c}")
    name=${target#fuzz_}
    extra=()
    case $name in
    imd*) extra=("${srv_obj[@]}" -lsqlite3 -lsodium -levent -levent_openssl -lssl -lcrypto -lpthread) ;;
    esac
    # shellcheck disable=SC2086 # flag lists
    $CXX $CXXFLAGS "$obj/fuzz/$target.o" "${lib_obj[@]}" "${extra[@]}" $LIB_FUZZING_ENGINE \
        -o "$OUT/$target"
    cp fuzz/imp.dict "$OUT/$target.dict"
    printf '[libfuzzer]\nmax_len = 262144\ntimeout = 25\ndict = %s.dict\n' "$target" \
        >"$OUT/$target.options"
    seeds=
    if [ -d "fuzz/corpus/$name" ]; then
        rm -f "$OUT/${target}_seed_corpus.zip"
        (cd "fuzz/corpus/$name" && zip -q -r -X "$OUT/${target}_seed_corpus.zip" .)
        seeds=", $(find "fuzz/corpus/$name" -type f | wc -l) seeds"
    fi
    echo "fuzz/build.sh: $OUT/$target$seeds"
done
