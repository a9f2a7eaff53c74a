#!/usr/bin/env bash
# Build the standalone self-test (core/tests/selftest.cpp) for every SIMD level and run it where it
# can run: the level's kernels and two random models against the scalar reference.
#
# The parts are the rows of core/simd_levels.txt (the SIMD level table; its header says what each
# column means), each built with -DBITMAMBA_SIMD=<simd> and its option (-DBITMAMBA_AVX2_VNNI=ON...):
#   scalar family       native build; run under `qemu-x86_64 -cpu <qemu>` (IvyBridge: no AVX2, no
#                       FMA) where the host is x86-64 and qemu-user is installed, else natively
#   x86 family          native build (x86-64 host); first, where the row names a `refuse` CPU and
#                       qemu-x86_64 is installed, the self-test must exit 77 there (avx2 on IvyBridge,
#                       the AVX-512 and AVX-VNNI levels on Haswell: refuse cleanly, never SIGILL);
#                       then run on the host when its /proc/cpuinfo has the row's cpuinfo flags (or
#                       the row names no qemu CPU), else under `qemu-x86_64 -cpu <qemu>` when that
#                       emulates them (Debian 12's QEMU 7.2 emulates AVX2 but neither AVX-512 nor
#                       AVX-VNNI), else the run is skipped (built only)
#   arm family          cross-compiled with g++-aarch64-linux-gnu (static, cmake/aarch64-linux-gnu.cmake),
#                       run under `qemu-aarch64 -cpu <qemu>` (neon on cortex-a72: proves it needs no
#                       extension); where the row names a `refuse` CPU the self-test must first exit
#                       77 there (neon-dotprod on cortex-a72: the import check refuses cleanly)
# Each build's `bitmamba_selftest --list-levels` must name the part as the row it was built as.
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

JOBS=${JOBS:-2}
HOST_ARCH=$(uname -m)

# ---------------------------------------------------------------- the level table
TABLE=core/simd_levels.txt
COLUMNS="name family simd option carries auto qemu refuse cflags msvc check cpuinfo"
ALL_PARTS=()  # the level names, in table order
ROWS=()       # their rows, single-spaced
read_table() {
  local line header="" name family simd option carries auto qemu refuse cflags msvc check cpuinfo rest
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}"  # leading blanks
    case "$line" in ''|'#'*) continue ;; esac
    if [ -z "$header" ]; then
      read -r -a rest <<<"$line"
      header="${rest[*]}"  # the column names, single-spaced
      [ "$header" = "$COLUMNS" ] || { echo "$TABLE: columns '$header', $0 reads '$COLUMNS'" >&2; exit 2; }
      continue
    fi
    read -r name family simd option carries auto qemu refuse cflags msvc check cpuinfo rest <<<"$line"
    [ -n "$cpuinfo" ] && [ -z "$rest" ] || { echo "$TABLE: malformed row '$line'" >&2; exit 2; }
    ALL_PARTS+=("$name")
    ROWS+=("$name $family $simd $option $carries $auto $qemu $refuse $cflags $msvc $check $cpuinfo")
  done <"$TABLE"
  [ ${#ALL_PARTS[@]} -gt 0 ] || { echo "$TABLE: no levels" >&2; exit 2; }
}
read_table
cell() {  # part column: the cell as written ("-": empty); status 1 for an unknown part
  local i c cols row
  read -r -a cols <<<"$COLUMNS"
  for i in "${!ALL_PARTS[@]}"; do
    [ "${ALL_PARTS[$i]}" = "$1" ] || continue
    read -r -a row <<<"${ROWS[$i]}"
    for c in "${!cols[@]}"; do [ "${cols[$c]}" = "$2" ] && { echo "${row[$c]}"; return 0; }; done
  done
  return 1
}
dash() { [ "$1" = - ] && echo "" || echo "$1"; }   # "-" is an empty cell
commas() { local v; v=$(dash "$1"); echo "${v//,/ }"; }  # a list cell, space-separated

install_only=0
parts=()
for a in "$@"; do
  case "$a" in
    --install-only) install_only=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | grep '^#'; echo "# parts: ${ALL_PARTS[*]}"; exit 0 ;;
    all) parts+=("${ALL_PARTS[@]}") ;;
    *)
      if cell "$a" name >/dev/null; then parts+=("$a")
      else echo "unknown part '$a' (parts: ${ALL_PARTS[*]})" >&2; exit 2; fi ;;
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
for p in "${parts[@]}"; do [ "$(cell "$p" family)" = arm ] && needs_neon_tools=1; done
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

# The build must be the row it was built as (baseline code: runs on any CPU of the family).
check_listed() {  # part runner...
  local part=$1 out
  shift
  out=$("$@" --list-levels 2>&1)
  grep -qx "built: $part (.*)" <<<"$out" && return 0
  echo "--list-levels of the $part build: $(grep '^built:' <<<"$out" || echo "$out" | tail -3)"
  return 1
}

run_part() {
  local part=$1 dir="build/selftest-$1" t0 t1 t2
  local family qemu refuse option cpuflags args cross=0 qemu_bin=""
  family=$(cell "$part" family)
  qemu=$(dash "$(cell "$part" qemu)")
  refuse=$(dash "$(cell "$part" refuse)")
  option=$(dash "$(cell "$part" option)")
  read -r -a cpuflags <<<"$(commas "$(cell "$part" cpuinfo)")"
  args=(-DBITMAMBA_SIMD="$(cell "$part" simd)")
  [ -n "$option" ] && args+=(-D"$option")
  echo "=== $part"
  case "$family" in
    scalar)
      [ "$HOST_ARCH" = x86_64 ] && qemu_bin=qemu-x86_64 ;;
    x86)
      if [ "$HOST_ARCH" != x86_64 ]; then result "$part" SKIP "host is $HOST_ARCH, not x86-64"; return; fi
      qemu_bin=qemu-x86_64 ;;
    arm)
      qemu_bin=qemu-aarch64
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
  local lister=("$exe")
  [ $cross = 1 ] && lister=(qemu-aarch64 -cpu "${qemu:-max}" "$exe")
  if ! check_listed "$part" "${lister[@]}"; then
    result "$part" FAIL "the build is not the $part row of $TABLE (BITMAMBA_SIMD / option wiring)"
    return
  fi

  if [ $cross = 0 ] && [ -n "$refuse" ]; then
    if have "$qemu_bin"; then
      # Without the level's features the build must refuse (exit 77), not die on SIGILL.
      run_selftest "$part" "$qemu_bin -cpu $refuse, a CPU without the level (must refuse)" "$qemu_bin" -cpu "$refuse" "$exe"
      if [ "$LAST_RC" != 77 ]; then
        result "$part" FAIL "on $refuse (no ${cpuflags[*]}) the self-test exited $LAST_RC instead of 77 (simd_supported_by_cpu)"
        return
      fi
    else
      echo "--- $part: not checked on $refuse: $qemu_bin (Debian qemu-user) is not installed"
    fi
  fi

  if [ $cross = 1 ]; then
    if [ -n "$refuse" ]; then
      # Without the level's extension the build must refuse (exit 77), not die on SIGILL.
      run_selftest "$part" "$qemu_bin -cpu $refuse, a CPU without the level (must refuse)" "$qemu_bin" -cpu "$refuse" "$exe"
      if [ "$LAST_RC" != 77 ]; then
        result "$part" FAIL "on $refuse (no ${cpuflags[*]}) the self-test exited $LAST_RC instead of 77 (simd_supported_by_cpu)"
        return
      fi
    fi
    run_selftest "$part" "$qemu_bin -cpu ${qemu:-max}" "$qemu_bin" -cpu "${qemu:-max}" "$exe"
  elif [ "$family" = scalar ] && [ -n "$qemu" ] && [ -n "$qemu_bin" ] && have "$qemu_bin"; then
    run_selftest "$part" "$qemu_bin -cpu $qemu (needs no extension)" "$qemu_bin" -cpu "$qemu" "$exe"
  elif [ -z "$qemu" ] || [ ${#cpuflags[@]} -eq 0 ]; then
    run_selftest "$part" native "$exe"
  elif cpu_has "${cpuflags[@]}"; then
    run_selftest "$part" "native (CPU has ${cpuflags[*]})" "$exe"
  elif have "$qemu_bin"; then
    local qv
    qv=$("$qemu_bin" --version | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)
    run_selftest "$part" "emulated" "$qemu_bin" -cpu "$qemu" "$exe"
    if [ "$LAST_RC" = 77 ] || [ "$LAST_RC" = 132 ]; then
      result "$part" SKIP "built in ${btime}s; not run: this CPU lacks ${cpuflags[*]} and $qemu_bin $qv -cpu $qemu does not emulate them"
      return
    fi
  else
    result "$part" SKIP "built in ${btime}s; not run: this CPU lacks ${cpuflags[*]} and $qemu_bin (Debian qemu-user) is not installed"
    return
  fi
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
