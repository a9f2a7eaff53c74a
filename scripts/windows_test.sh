#!/usr/bin/env bash
# The standalone self-test (core/tests/selftest.cpp) built for 64-bit Windows with MinGW-w64 and run
# under wine64: the x86 levels' kernels and models against the scalar reference on Windows' C runtime,
# the import-time CPU check through CPUID/XGETBV without /proc/cpuinfo, and the configure-time CPU
# probe (cmake/cpu_probe.cpp) run as a Windows program (BITMAMBA_SIMD=auto with BITMAMBA_CPU_DETECT=probe:
# it must pick the level this host's /proc/cpuinfo gives).
#
# Needs Debian's g++-mingw-w64-x86-64-posix and wine64 (not installed by scripts/test: wine is large);
# without them every part is skipped with the reason. The levels run where this CPU has them.
#
# Usage: scripts/windows_test.sh [level...]   (default: scalar avx2 avx512 auto)
# Build dirs: build/windows-<level>. Prints "RESULT windows-<level>: PASS|SKIP|FAIL ..." per part;
# exit status 1 if a part failed, 77 if all were skipped, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."

JOBS=${JOBS:-2}
CXX_W=x86_64-w64-mingw32-g++-posix
WINE=$(command -v wine64 || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true)
export WINEPREFIX="${WINEPREFIX:-$PWD/build/windows-wineprefix}" WINEDEBUG=-all
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(scalar avx2 avx512 auto)
n_pass=0 n_skip=0 n_fail=0
result() {
  echo "RESULT windows-$1: $2${3:+ - $3}"
  case "$2" in PASS) n_pass=$((n_pass + 1)) ;; SKIP) n_skip=$((n_skip + 1)) ;; *) n_fail=$((n_fail + 1)) ;; esac
}
cpu_has() { local f; for f in "$@"; do grep -qw -- "$f" /proc/cpuinfo 2>/dev/null || return 1; done; }

for part in "${parts[@]}"; do
  if ! command -v "$CXX_W" >/dev/null || [ -z "$WINE" ]; then
    result "$part" SKIP "needs $CXX_W (Debian g++-mingw-w64-x86-64-posix) and wine64 (Debian wine64)"
    continue
  fi
  dir="build/windows-$part"
  args=(-DBITMAMBA_SIMD="$part")
  if [ "$part" = auto ]; then
    args=(-DBITMAMBA_SIMD=auto -DBITMAMBA_CPU_DETECT=probe -DCMAKE_CROSSCOMPILING_EMULATOR="$WINE")
  fi
  mkdir -p "$dir"
  if ! cmake -S . -B "$dir" -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/x86_64-w64-mingw32.cmake" -DCMAKE_BUILD_TYPE=Release \
      -DBITMAMBA_PYTHON=OFF -DBITMAMBA_BUILD_SELFTEST=ON "${args[@]}" >"$dir/configure.log" 2>&1; then
    tail -15 "$dir/configure.log"
    result "$part" FAIL "configure failed (logs in $dir)"
    continue
  fi
  level=$(sed -n 's/.*bitmamba: SIMD level \([^ ]*\) .*/\1/p' "$dir/configure.log" | tail -1)
  if [ "$part" = auto ]; then
    want=$(cmake -DBM_TARGET_PROCESSOR=x86_64 -DBITMAMBA_CPUINFO=/proc/cpuinfo -P cmake/simd_levels.cmake 2>&1 |
           sed -n 's/.*bitmamba: SIMD level \([^ ]*\) .*/\1/p')
    if [ "$level" != "$want" ]; then
      grep "bitmamba:" "$dir/configure.log"
      result "$part" FAIL "the Windows probe chose $level, /proc/cpuinfo gives $want"
      continue
    fi
  fi
  if ! cmake --build "$dir" --target bitmamba_selftest -j "$JOBS" >"$dir/build.log" 2>&1; then
    grep -E "error" "$dir/build.log" | head -20
    result "$part" FAIL "build failed (logs in $dir)"
    continue
  fi
  echo "--- windows-$part ($level): $WINE $dir/bitmamba_selftest.exe"
  out=$(timeout 600 "$WINE" "$dir/bitmamba_selftest.exe" 2>&1)
  rc=$?
  echo "$out"
  case $rc in
    0) result "$part" PASS "level $level" ;;
    77) result "$part" SKIP "level $level: this CPU does not have it (refused cleanly)" ;;
    *) result "$part" FAIL "self-test exited $rc (level $level)" ;;
  esac
done
echo "SUMMARY: $n_pass passed, $n_skip skipped, $n_fail failed (${parts[*]})"
[ $n_fail -eq 0 ] || exit 1
[ $n_pass -gt 0 ] || exit 77
exit 0
