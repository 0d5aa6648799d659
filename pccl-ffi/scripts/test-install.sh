#!/usr/bin/env bash
# The install stage (README "Installing the C library"): installs pccl into fresh prefixes
# with ./scripts/install and uses it as C and C++ users do.
#   1. the layout: files, SONAME and version symlinks, manifest; the system libraries
#      listed for libpccl.a are rustc's native-static-libs
#   2. pkg-config (pccl, pccl-static) and find_package(pccl) (pccl::pccl, pccl::pccl_static):
#      pccl-ffi/tests/install/consumer.c built as C99, C++17 and C++20, shared and static,
#      checking the header's version macros against the version found, then run against
#      the installed bin/pccl-master; `pkg-config --static --libs pccl` (Libs.private)
#      linking a static-only prefix
#   3. examples/cpp built with CMake against the prefix: a master and 3 DiLoCo peers, one
#      killed with SIGKILL, a newcomer (linked statically) joining; every survivor must end with the same
#      bytes of shared state, no sync after the first having had to repair any, and a
#      loss below half the initial one
#   4. reinstalling over an older install, DESTDIR staging, uninstalling
# Installs cmake, pkg-config and g++ with apt-get when missing (as root on Debian/Ubuntu).
# Usage: pccl-ffi/scripts/test-install.sh   (from any directory)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v g++ >/dev/null 2>&1 || missing+=(g++) # the C++17/C++20 consumers and the example
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "error: this stage needs ${missing[*]}; install them (e.g. apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

T=$(mktemp -d /tmp/pccl-install-test.XXXXXX)
PIDS=() # every process started here; each is a session leader (setsid)
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$T"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# start NAME COMMAND...: runs COMMAND in its own session, stdout to $T/NAME.out and stderr
# to $T/NAME.err; its pid is in PID_<NAME>.
start() {
    local name="$1"
    shift
    setsid "$@" >"$T/$name.out" 2>"$T/$name.err" &
    PIDS+=($!)
    printf -v "PID_$name" '%s' $!
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
    local deadline=$(( $(date +%s) + $1 )) what="$2"
    shift 2
    until "$@"; do
        [[ $(date +%s) -lt $deadline ]] || fail "timed out waiting for $what"
        sleep 0.1
    done
}

# finish NAME SECONDS: waits for process NAME to exit and fails unless it exited 0.
finish() {
    local pid_var="PID_$1" deadline=$(( $(date +%s) + $2 )) rc=0
    while kill -0 "${!pid_var}" 2>/dev/null; do
        if [[ $(date +%s) -ge $deadline ]]; then
            tail -n 5 "$T/$1.out" "$T/$1.err" >&2
            fail "$1 did not finish within $2 s"
        fi
        sleep 0.1
    done
    wait "${!pid_var}" || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$T/$1.out" "$T/$1.err" >&2
        fail "$1 exited with status $rc"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

VERSION=$(sed -n 's/^#define PCCL_VERSION "\(.*\)"$/\1/p' include/pccl.h)
IFS=. read -r MAJOR MINOR _ <<<"$VERSION"
if [[ $MAJOR == 0 ]]; then SOVER="0.$MINOR"; else SOVER="$MAJOR"; fi
WARN=(-Wall -Wextra -Werror -pedantic)

echo "==> 1. ./scripts/install --prefix $T/prefix"
P="$T/prefix"
./scripts/install --prefix "$P" >"$T/install.log" 2>&1 || { cat "$T/install.log"; fail "install"; }
for f in include/pccl.h include/ccoip.h include/ccoip_inet.h "lib/libpccl.so.$VERSION" lib/libpccl.a \
    bin/pccl-master lib/pkgconfig/pccl.pc lib/pkgconfig/pccl-static.pc \
    lib/cmake/pccl/pcclConfig.cmake lib/cmake/pccl/pcclConfigVersion.cmake \
    share/pccl/install_manifest.txt; do
    [[ -f "$P/$f" && ! -L "$P/$f" ]] || fail "$P/$f is missing (or not a file)"
done
[[ $(readlink "$P/lib/libpccl.so.$SOVER") == "libpccl.so.$VERSION" ]] || fail "libpccl.so.$SOVER"
[[ $(readlink "$P/lib/libpccl.so") == "libpccl.so.$SOVER" ]] || fail "libpccl.so"
soname=$(readelf -d "$P/lib/libpccl.so.$VERSION" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[[ "$soname" == "libpccl.so.$SOVER" ]] || fail "SONAME is '$soname', want libpccl.so.$SOVER"
cmp -s include/pccl.h "$P/include/pccl.h" || fail "the installed pccl.h differs"
# The manifest lists exactly what is there.
diff <(sort "$P/share/pccl/install_manifest.txt") <(find "$P" \( -type f -o -type l \) | sort) ||
    fail "the manifest and the installed files differ"
echo "ok: layout, SONAME $soname, manifest"
# The system libraries scripts/install lists for libpccl.a (pccl-static.pc's Libs, pccl.pc's
# Libs.private, pccl::pccl_static's link interface) are still those rustc says it needs.
native=$(cargo rustc --release --locked -p pccl-ffi --lib --crate-type staticlib -- \
    --print native-static-libs 2>&1 | sed -n 's/.*native-static-libs: //p' | tail -1)
[[ -n "$native" ]] || fail "rustc printed no native-static-libs"
export PKG_CONFIG_PATH="$P/lib/pkgconfig"
listed=$(pkg-config --libs pccl-static)
[[ "$(echo $native)" == "$(echo ${listed#* })" ]] ||
    fail "libpccl.a needs '$native'; scripts/install lists '${listed#* }'"
[[ "$(echo $(pkg-config --static --libs pccl))" == "$(echo "-L$P/lib -lpccl $native")" ]] ||
    fail "pkg-config --static --libs pccl: '$(pkg-config --static --libs pccl)'"
grep -qF "INTERFACE_LINK_LIBRARIES \"$(echo $native | sed -e 's/-l//g' -e 's/ /;/g')\"" \
    "$P/lib/cmake/pccl/pcclConfig.cmake" || fail "pccl::pccl_static's system libraries"
echo "ok: libpccl.a's system libraries ($native) in pccl-static.pc, pccl.pc and pccl::pccl_static"

# The installed master, for the consumers to join (port 0: it reports the port it got).
start master "$P/bin/pccl-master" --listen 127.0.0.1:0
wait_for 30 "pccl-master to listen" grep -q "listening on" "$T/master.err"
MASTER_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/master.err" | head -1)
[[ -n "$MASTER_PORT" ]] || fail "no port in: $(cat "$T/master.err")"

# run_consumer EXE LINKAGE: runs EXE against the master; shared ones must need
# libpccl.so.SOVER, static ones no libpccl at all.
run_consumer() {
    local needed
    needed=$(readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(libpccl[^]]*\)\]/\1/p')
    if [[ $2 == shared ]]; then
        [[ "$needed" == "libpccl.so.$SOVER" ]] || fail "$1 needs '$needed', want libpccl.so.$SOVER"
    else
        [[ -z "$needed" ]] || fail "$1, linked statically, needs $needed"
    fi
    [[ $(timeout 60 "$1" "$MASTER_PORT") == OK ]] || fail "$1 did not print OK"
}

echo "==> 2a. pkg-config"
[[ $(pkg-config --modversion pccl) == "$VERSION" ]] || fail "pkg-config --modversion pccl"
[[ $(pkg-config --modversion pccl-static) == "$VERSION" ]] || fail "pkg-config --modversion pccl-static"
mkdir -p "$T/pc"
cp pccl-ffi/tests/install/consumer.c "$T/pc/consumer.cpp" # g++ by extension
for std in c99 c++17 c++20; do
    if [[ $std == c99 ]]; then cc=(gcc); src=pccl-ffi/tests/install/consumer.c; else cc=(g++); src="$T/pc/consumer.cpp"; fi
    for kind in shared static; do
        exe="$T/pc/${std}_$kind"
        if [[ $kind == shared ]]; then
            # shellcheck disable=SC2046 # pkg-config's output is a list of flags
            "${cc[@]}" -std="$std" "${WARN[@]}" -DPCCL_EXPECTED_VERSION="\"$(pkg-config --modversion pccl)\"" \
                "$src" -o "$exe" $(pkg-config --cflags --libs pccl) \
                -Wl,-rpath,"$(pkg-config --variable=libdir pccl)"
        else
            # shellcheck disable=SC2046
            "${cc[@]}" -std="$std" "${WARN[@]}" -DPCCL_EXPECTED_VERSION="\"$(pkg-config --modversion pccl-static)\"" \
                "$src" -o "$exe" $(pkg-config --cflags --libs pccl-static)
        fi
        run_consumer "$exe" "$kind"
    done
done
# The usual static way too: `pkg-config --static`, whose Libs.private (pccl.pc) adds the
# system libraries, in a prefix holding libpccl.a alone, as a static-only package would.
S="$T/static-only"
./scripts/install --prefix "$S" --no-build >"$T/static-only.log" 2>&1 || { cat "$T/static-only.log"; fail "install (static-only)"; }
rm "$S"/lib/libpccl.so*
# shellcheck disable=SC2046
gcc -std=c99 "${WARN[@]}" -DPCCL_EXPECTED_VERSION="\"$VERSION\"" pccl-ffi/tests/install/consumer.c \
    -o "$T/pc/c99_pc_static" $(PKG_CONFIG_PATH="$S/lib/pkgconfig" pkg-config --static --cflags --libs pccl)
run_consumer "$T/pc/c99_pc_static" static
# Without --static the link must fail (libpccl.a needs -lm at least), or the link above
# would not show that Libs.private is complete.
# shellcheck disable=SC2046
if gcc -std=c99 -DPCCL_EXPECTED_VERSION="\"$VERSION\"" pccl-ffi/tests/install/consumer.c \
    -o "$T/pc/c99_no_private" $(PKG_CONFIG_PATH="$S/lib/pkgconfig" pkg-config --cflags --libs pccl) \
    >/dev/null 2>&1; then
    fail "libpccl.a linked without pccl.pc's Libs.private: does it need no system library now?"
fi
echo "ok: pkg-config, C99 / C++17 / C++20, shared and static; pkg-config --static pccl (Libs.private)"

echo "==> 2b. CMake find_package(pccl)"
cmake -S pccl-ffi/tests/install -B "$T/cm" -DCMAKE_PREFIX_PATH="$P" -DPCCL_EXPECTED_VERSION="$VERSION" \
    -DCMAKE_C_FLAGS="${WARN[*]}" -DCMAKE_CXX_FLAGS="${WARN[*]}" >"$T/cm.log" 2>&1 ||
    { cat "$T/cm.log"; fail "cmake configure (pccl-ffi/tests/install)"; }
cmake --build "$T/cm" -j 2 >>"$T/cm.log" 2>&1 || { cat "$T/cm.log"; fail "cmake build"; }
for std in c99 cxx17 cxx20; do
    for kind in shared static; do
        run_consumer "$T/cm/${std}_$kind" "$kind"
    done
done
echo "ok: find_package, C99 / C++17 / C++20, pccl::pccl and pccl::pccl_static; version requests"
# pccl-master has no SIGTERM handler: the signal's default action ends it (status 143).
kill -TERM "$PID_master"
rc=0
wait "$PID_master" || rc=$?
[[ $rc -eq 143 ]] || fail "pccl-master ended with status $rc before SIGTERM: $(tail -n 5 "$T/master.err")"

echo "==> 3. examples/cpp: master + 3 DiLoCo peers, kill -9, a newcomer"
cmake -S examples/cpp -B "$T/cpp" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_FLAGS="${WARN[*]}" >"$T/cpp.log" 2>&1 || { cat "$T/cpp.log"; fail "cmake configure (examples/cpp)"; }
cmake --build "$T/cpp" >>"$T/cpp.log" 2>&1 || { cat "$T/cpp.log"; fail "cmake build (examples/cpp)"; }
# The newcomer is the statically linked build (PCCL_EXAMPLE_STATIC, pccl::pccl_static).
cmake -S examples/cpp -B "$T/cpp-static" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=Release \
    -DPCCL_EXAMPLE_STATIC=ON -DCMAKE_CXX_FLAGS="${WARN[*]}" >>"$T/cpp.log" 2>&1 &&
    cmake --build "$T/cpp-static" >>"$T/cpp.log" 2>&1 || { cat "$T/cpp.log"; fail "examples/cpp, static"; }
readelf -d "$T/cpp-static/diloco" | grep -q libpccl && fail "the static example needs libpccl.so"
DILOCO="$T/cpp/diloco"
port=$(free_port)
start ex_master "$DILOCO" master --listen "127.0.0.1:$port"
wait_for 30 "the example's master" grep -q "master listening" "$T/ex_master.out"

# revision NAME: the last revision peer NAME reported (0 before its first step).
revision() { sed -n 's/^step revision=\([0-9]*\).*/\1/p' "$T/$1.out" | tail -1 | grep . || echo 0; }
alive() { local v="PID_$1"; kill -0 "${!v}" 2>/dev/null || fail "$1 exited early: $(tail -n 3 "$T/$1.err")"; }
at_least() { # at_least REVISION NAME...: every NAME alive and at REVISION or beyond
    local want=$1 name
    shift
    for name in "$@"; do
        alive "$name"
        [[ $(revision "$name") -ge $want ]] || return 1
    done
}
peer() { # peer NAME SEED [EXECUTABLE]
    start "$1" "${3:-$DILOCO}" peer --master "127.0.0.1:$port" --until-revision 30 --min-final-world 3 \
        --step-delay-ms 50 --time-limit-s 150 --data-seed "$2" --out "$T/$1.bin"
}
peer p1 1
peer p2 2
peer p3 3
wait_for 60 "3 peers at revision 5" at_least 5 p1 p2 p3
echo "killing p2 with SIGKILL at revision $(revision p2)"
kill -KILL "$PID_p2"
rc=0
wait "$PID_p2" || rc=$?
[[ $rc -eq 137 ]] || fail "the victim exited with $rc, not by SIGKILL"
at_kill=$(( $(revision p1) > $(revision p3) ? $(revision p1) : $(revision p3) ))
wait_for 60 "progress after the kill" at_least $(( at_kill + 3 )) p1 p3
peer p4 4 "$T/cpp-static/diloco"
for p in p1 p3 p4; do finish "$p" 120; done
kill -TERM "$PID_ex_master"
finish ex_master 30
grep -q "master stopped" "$T/ex_master.out" || fail "the example's master did not stop cleanly"

final() { grep '^final ' "$T/$1.out" || fail "$1 printed no final line"; }
ref=$(final p1)
for p in p3 p4; do
    [[ "$(final "$p")" == "$ref" ]] ||
        fail "$p ended with '$(final "$p")', p1 with '$ref'"
    cmp "$T/p1.bin" "$T/$p.bin" || fail "$p's shared state differs from p1's"
done
read -r rev world loss initial <<<"$(sed -n 's/^final revision=\([0-9]*\) world=\([0-9]*\) loss=\([^ ]*\) initial_loss=\([^ ]*\).*/\1 \2 \3 \4/p' <<<"$ref")"
[[ $rev -ge 30 && $world -eq 3 ]] || fail "ended at revision $rev with world $world"
awk -v l="$loss" -v i="$initial" 'BEGIN { exit !(l < 0.5 * i) }' || fail "loss $initial -> $loss: not halved"
# Every outer step was computed to the same bits everywhere: no sync after a peer's first
# had anything to send it.
[[ "$ref" == *" resync_rx=0" ]] || fail "syncs had to repair diverged state: '$ref'"
grep -q "world=2 " "$T/p1.out" || fail "p1 never ran on the 2-peer ring after the kill"
first_sync=$(grep '^first sync' "$T/p4.out")
read -r nrev nrx <<<"$(sed -n 's/^first sync: revision \([0-9]*\), received \([0-9]*\) bytes/\1 \2/p' <<<"$first_sync")"
[[ $nrev -gt 5 && $nrx -gt 0 ]] || fail "the newcomer's first sync: '$first_sync'"
echo "ok: survivors and newcomer bit-identical at revision $rev (world $world), loss $initial -> $loss;"
echo "    the newcomer received $nrx bytes of shared state at revision $nrev"

echo "==> 4a. reinstalling over an older install"
# An older install, as its manifest and links would be: version X.Y.Z-1 on an older line.
O="$T/old"
./scripts/install --prefix "$O" --no-build >"$T/old.log" 2>&1 || { cat "$T/old.log"; fail "install (old)"; }
OLD_VERSION="0.0.9"
mv "$O/lib/libpccl.so.$VERSION" "$O/lib/libpccl.so.$OLD_VERSION"
rm "$O/lib/libpccl.so.$SOVER"
ln -s "libpccl.so.$OLD_VERSION" "$O/lib/libpccl.so.0.0"
ln -sfn libpccl.so.0.0 "$O/lib/libpccl.so"
sed -i -e "s|libpccl.so.$VERSION\$|libpccl.so.$OLD_VERSION|" -e "s|libpccl.so.$SOVER\$|libpccl.so.0.0|" \
    "$O/share/pccl/install_manifest.txt"
./scripts/install --prefix "$O" --no-build >"$T/reinstall.log" 2>&1 || { cat "$T/reinstall.log"; fail "reinstall"; }
[[ ! -e "$O/lib/libpccl.so.$OLD_VERSION" && ! -L "$O/lib/libpccl.so.0.0" ]] ||
    fail "the older version's files were left behind"
[[ $(readlink "$O/lib/libpccl.so") == "libpccl.so.$SOVER" ]] || fail "libpccl.so after reinstall"
diff <(sort "$O/share/pccl/install_manifest.txt") <(find "$O" \( -type f -o -type l \) | sort) ||
    fail "the manifest after reinstall"
PKG_CONFIG_PATH="$O/lib/pkgconfig" gcc -std=c99 -DPCCL_EXPECTED_VERSION="\"$VERSION\"" \
    pccl-ffi/tests/install/consumer.c -o "$T/reinstalled" $(PKG_CONFIG_PATH="$O/lib/pkgconfig" pkg-config --cflags --libs pccl) \
    -Wl,-rpath,"$O/lib"
[[ $("$T/reinstalled") == OK ]] || fail "a program built against the reinstall"
echo "ok: the older version's files removed, links and manifest current"

echo "==> 4b. DESTDIR staging and uninstall"
DESTDIR="$T/stage" ./scripts/install --prefix /opt/pccl --no-build >"$T/stage.log" 2>&1 || { cat "$T/stage.log"; fail "DESTDIR install"; }
[[ -f "$T/stage/opt/pccl/lib/libpccl.a" ]] || fail "DESTDIR: nothing under $T/stage/opt/pccl"
grep -qx "prefix=/opt/pccl" "$T/stage/opt/pccl/lib/pkgconfig/pccl.pc" || fail "DESTDIR: pccl.pc names another prefix"
grep -qx "/opt/pccl/lib/libpccl.a" "$T/stage/opt/pccl/share/pccl/install_manifest.txt" || fail "DESTDIR: manifest"
DESTDIR="$T/stage" ./scripts/install --uninstall --prefix /opt/pccl >/dev/null || fail "DESTDIR uninstall"
[[ -z "$(find "$T/stage/opt/pccl" ! -type d)" && ! -e "$T/stage/opt/pccl/share/pccl" ]] ||
    fail "DESTDIR uninstall left $(find "$T/stage/opt/pccl" ! -type d | head -3)"
./scripts/install --uninstall --prefix "$P" >/dev/null || fail "uninstall"
[[ -z "$(find "$P" ! -type d)" && ! -e "$P/lib/cmake/pccl" ]] ||
    fail "uninstall left $(find "$P" ! -type d | head -3)"
echo "ok: DESTDIR names the prefix, uninstall removes every file"
echo "PASS: install, pkg-config, CMake, C++ example"
