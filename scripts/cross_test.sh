#!/usr/bin/env bash
# Build the standalone self-test (core/tests/selftest.cpp) for every SIMD level and run it where it
# can run: the level's kernels and two random models against the scalar reference.
#
#   scalar, avx2        native build and run (x86-64 host; avx2 with AVX-VNNI off)
#   avx2-vnni, avx512, avx512-vnni
#                       native build (-DBITMAMBA_SIMD=avx2 with AVX-VNNI on; -DBITMAMBA_SIMD=avx512,
#                       VNNI off / on); run on the host when /proc/cpuinfo has the extensions, else
#                       under `qemu-x86_64 -cpu max` when that emulates them (Debian 12's QEMU 7.2
#                       does not emulate AVX-512), else skip the run (built only)
#   neon, neon-dotprod  cross-compiled with g++-aarch64-linux-gnu (static, cmake/aarch64-linux-gnu.cmake),
#                       run under qemu-aarch64: neon on -cpu cortex-a72 (Armv8.0: proves it needs no
#                       extension), neon-dotprod on -cpu max (and it must refuse cleanly on cortex-a72)
#
# Usage: scripts/cross_test.sh [--install-only] [part...]   (default: every part)
# Build dirs: build/selftest-<part> (reused; incremental). JOBS (default 2) parallel compile jobs.
# Missing Debian tools (g++-aarch64-linux-gnu, qemu-user) are installed with apt-get when running as
# root, unless BITMAMBA_CROSS_INSTALL=0; otherwise the parts needing them are skipped with a reason.
# BITMAMBA_CPUINFO=<file> replaces /proc/cpuinfo (to exercise the no-AVX-512 path on an AVX-512 host).
# Prints "RESULT <part>: PASS|SKIP|FAIL ..." per part. Exit status: 1 if a part failed, 77 if every
# requested part was skipped, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_PARTS=(scalar avx2 avx2-vnni avx512 avx512-vnni neon neon-dotprod)
JOBS=${JOBS:-2}
HOST_ARCH=$(uname -m)

install_only=0
parts=()
for a in "$@"; do
  case "$a" in
    --install-only) install_only=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    all) parts+=("${ALL_PARTS[@]}") ;;
    scalar|avx2|avx2-vnni|avx512|avx512-vnni|neon|neon-dotprod) parts+=("$a") ;;
    *) echo "unknown part '$a' (parts: ${ALL_PARTS[*]})" >&2; exit 2 ;;
  esac
done
[ ${#parts[@]} -gt 0 ] || parts=("${ALL_PARTS[@]}")

have() { command -v "$1" >/dev/null 2>&1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- Debian tools for the NEON parts
install_tools() {
  have aarch64-linux-gnu-g++ && have qemu-aarch64 && return 0
  if [ "$HOST_ARCH" = aarch64 ]; then return 0; fi
  if [ "${BITMAMBA_CROSS_INSTALL:-1}" = 0 ]; then return 1; fi
  if [ "$(id -u)" != 0 ] || ! have apt-get; then return 1; fi
  local pkgs=(g++-aarch64-linux-gnu qemu-user) log=/tmp/bitmamba-cross-apt.$$.log
  echo "installing ${pkgs[*]} with apt-get (log: $log)"
  local apt=(apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends -q "${pkgs[@]}")
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$log" 2>&1; then
    # package lists may be missing or stale in a fresh container
    apt-get -o DPkg::Lock::Timeout=300 update -q >>"$log" 2>&1
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$log" 2>&1 || { echo "apt-get install failed:"; tail -5 "$log"; return 1; }
  fi
  have aarch64-linux-gnu-g++ && have qemu-aarch64
}

neon_tools_reason() {
  local why=()
  have aarch64-linux-gnu-g++ || why+=("aarch64-linux-gnu-g++ (Debian g++-aarch64-linux-gnu)")
  have qemu-aarch64 || why+=("qemu-aarch64 (Debian qemu-user)")
  local msg="missing ${why[0]}${why[1]:+, ${why[1]}}"
  if [ "$(id -u)" != 0 ]; then msg+="; not root, so not installed"
  elif ! have apt-get; then msg+="; no apt-get"
  elif [ "${BITMAMBA_CROSS_INSTALL:-1}" = 0 ]; then msg+="; not installed here (scripts/cross_test.sh --install-only installs them)"
  else msg+="; apt-get install failed"; fi
  echo "$msg"
}

if [ $install_only = 1 ]; then
  install_tools && { echo "cross tools present: $(command -v aarch64-linux-gnu-g++) $(command -v qemu-aarch64)"; exit 0; }
  echo "cross tools unavailable: $(neon_tools_reason)"; exit 1
fi

needs_neon_tools=0
for p in "${parts[@]}"; do case "$p" in neon*) needs_neon_tools=1 ;; esac; done
if [ $needs_neon_tools = 1 ] && [ "$HOST_ARCH" != aarch64 ]; then install_tools; fi

# ---------------------------------------------------------------- one part
cpu_has() {  # all given /proc/cpuinfo flags present
  local f
  for f in "$@"; do grep -qw -- "$f" "${BITMAMBA_CPUINFO:-/proc/cpuinfo}" 2>/dev/null || return 1; done
}

n_pass=0 n_skip=0 n_fail=0
result() {  # part status message
  echo "RESULT $1: $2${3:+ - $3}"
  case "$2" in PASS) n_pass=$((n_pass + 1)) ;; SKIP) n_skip=$((n_skip + 1)) ;; *) n_fail=$((n_fail + 1)) ;; esac
}

build() {  # part dir cmake-args...
  local part=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  local gen=()
  [ -f "$dir/CMakeCache.txt" ] || { have ninja && gen=(-G Ninja); }
  if ! cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBITMAMBA_PYTHON=OFF \
      -DBITMAMBA_BUILD_SELFTEST=ON "$@" >"$dir/configure.log" 2>&1; then
    tail -20 "$dir/configure.log"
    return 1
  fi
  if ! cmake --build "$dir" --target bitmamba_selftest -j "$JOBS" >"$dir/build.log" 2>&1; then
    grep -E "error|Error" "$dir/build.log" | head -30
    tail -5 "$dir/build.log"
    return 1
  fi
}

# run_selftest part label cmd...: PASS on 0, SKIP on 77 (CPU lacks the level), FAIL otherwise.
run_selftest() {
  local part=$1 label=$2
  shift 2
  echo "--- $part: $label: $*"
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  echo "$out"
  LAST_RC=$rc
  return $rc
}

run_part() {
  local part=$1 dir="build/selftest-$1" t0 t1 t2
  local args=() cross=0 runner=() cpu_ok=1 cpu_reason=""
  echo "=== $part"
  case "$part" in
    scalar) args=(-DBITMAMBA_SIMD=scalar) ;;
    avx2) args=(-DBITMAMBA_SIMD=avx2 -DBITMAMBA_AVX2_VNNI=OFF) ;;
    avx2-vnni) args=(-DBITMAMBA_SIMD=avx2 -DBITMAMBA_AVX2_VNNI=ON) ;;
    avx512) args=(-DBITMAMBA_SIMD=avx512 -DBITMAMBA_AVX512_VNNI=OFF) ;;
    avx512-vnni) args=(-DBITMAMBA_SIMD=avx512 -DBITMAMBA_AVX512_VNNI=ON) ;;
    neon) args=(-DBITMAMBA_SIMD=neon -DBITMAMBA_NEON_DOTPROD=OFF) ;;
    neon-dotprod) args=(-DBITMAMBA_SIMD=neon -DBITMAMBA_NEON_DOTPROD=ON) ;;
  esac
  case "$part" in
    avx*)
      if [ "$HOST_ARCH" != x86_64 ]; then result "$part" SKIP "host is $HOST_ARCH, not x86-64"; return; fi ;;
    neon*)
      if [ "$HOST_ARCH" != aarch64 ]; then
        if ! have aarch64-linux-gnu-g++ || ! have qemu-aarch64; then
          result "$part" SKIP "$(neon_tools_reason)"
          return
        fi
        cross=1
        args+=(-DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake")
      fi ;;
  esac

  t0=$(now)
  if ! build "$part" "$dir" "${args[@]}"; then
    result "$part" FAIL "build failed (logs in $dir)"
    return
  fi
  t1=$(now)
  local exe="$dir/bitmamba_selftest" btime
  btime=$(secs "$t0" "$t1")

  case "$part" in
    scalar|avx2)
      run_selftest "$part" native "$exe" ;;
    avx2-vnni|avx512|avx512-vnni)
      local flags=(avx512f avx512bw avx512vl avx512dq)
      [ "$part" = avx512-vnni ] && flags+=(avx512_vnni)
      [ "$part" = avx2-vnni ] && flags=(avx2 fma avx_vnni)
      if cpu_has "${flags[@]}"; then
        run_selftest "$part" "native (CPU has ${flags[*]})" "$exe"
      elif have qemu-x86_64; then
        local qv
        qv=$(qemu-x86_64 --version | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)
        run_selftest "$part" "emulated" qemu-x86_64 -cpu max "$exe"
        if [ "$LAST_RC" = 77 ] || [ "$LAST_RC" = 132 ]; then
          result "$part" SKIP "built in ${btime}s; not run: this CPU lacks ${flags[*]} and qemu-x86_64 $qv -cpu max does not emulate them"
          return
        fi
      else
        result "$part" SKIP "built in ${btime}s; not run: this CPU lacks ${flags[*]} and qemu-x86_64 (Debian qemu-user) is not installed"
        return
      fi ;;
    neon)
      if [ $cross = 1 ]; then run_selftest "$part" "qemu-aarch64, Armv8.0 CPU" qemu-aarch64 -cpu cortex-a72 "$exe"
      else run_selftest "$part" native "$exe"; fi ;;
    neon-dotprod)
      if [ $cross = 1 ]; then
        # Without the dot-product extension the build must refuse (exit 77), not die on SIGILL.
        run_selftest "$part" "qemu-aarch64 without dotprod (must refuse)" qemu-aarch64 -cpu cortex-a72 "$exe"
        if [ "$LAST_RC" != 77 ]; then
          result "$part" FAIL "on a CPU without dotprod the self-test exited $LAST_RC instead of 77 (simd_supported_by_cpu)"
          return
        fi
        run_selftest "$part" "qemu-aarch64 -cpu max" qemu-aarch64 -cpu max "$exe"
      else
        run_selftest "$part" native "$exe"
      fi ;;
  esac
  local rc=$LAST_RC
  t2=$(now)
  case $rc in
    0) result "$part" PASS "build ${btime}s, run $(secs "$t1" "$t2")s" ;;
    77) result "$part" SKIP "built in ${btime}s; this CPU does not support the level" ;;
    *) result "$part" FAIL "self-test exited $rc (build ${btime}s, run $(secs "$t1" "$t2")s)" ;;
  esac
}

LAST_RC=0
for p in "${parts[@]}"; do run_part "$p"; done
echo "SUMMARY: $n_pass passed, $n_skip skipped, $n_fail failed (${parts[*]})"
[ $n_fail -eq 0 ] || exit 1
[ $n_pass -gt 0 ] || exit 77
exit 0
