#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu box (root or sudo):
#   ./scripts/setup.sh run   - install everything, check it, serve the dashboard (hivecell up)
#   ./scripts/setup.sh test  - install everything, then lint, type-check and run all tests
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  bubblewrap xvfb openbox x11vnc xclip xsel xdotool wmctrl x11-utils slirp4netns nftables
  xterm mousepad chromium scrot fonts-dejavu-core dbus-x11 procps iproute2
  dbus-daemon at-spi2-core
  python3 python3-venv python3-pip ca-certificates git
  # the sandboxes' full desktop: hivecell.guest.desktopenv.PACKAGES (a test keeps them equal)
  tint2 pcmanfm adwaita-icon-theme fonts-noto-core fonts-noto-cjk libnotify-bin dunst
  # VM sandboxes (--provider qemu) and their templates (hivecell template build)
  qemu-system-x86 qemu-utils mmdebstrap e2fsprogs
)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Tests also run the task store against a real PostgreSQL server and the dashboard in Firefox
# (driven over WebDriver BiDi, which Firefox speaks natively).
TEST_APT_PACKAGES=(postgresql firefox-esr python3-gi gir1.2-gtk-3.0)

install_system() {
  local missing=() wanted=("${APT_PACKAGES[@]}")
  if [ "${mode:-}" = test ]; then wanted+=("${TEST_APT_PACKAGES[@]}"); fi
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

install_uv() {
  if command -v uv >/dev/null 2>&1; then UV=uv; return; fi
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/hivecell/uv-bootstrap"
  if [ ! -x "$venv/bin/uv" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q uv
  fi
  UV="$venv/bin/uv"
}

install_python() {
  # Bytecode now, not at every start: where PYTHONDONTWRITEBYTECODE is set (as on CI's
  # machines) nothing writes it later, and every process compiled its imports from source
  # (`hivecell up` took 8.3 s instead of 3.5 s here). compileall skips what is up to date.
  "$UV" sync --frozen --all-extras --compile-bytecode
  "$UV" run --frozen python -m compileall -q -j 0 src >/dev/null
}

run_server() {
  "$UV" run hivecell doctor
  # Extra arguments go to `hivecell up` (e.g. --port 9000); it prints the login link.
  exec "$UV" run hivecell up "$@"
}

start_postgres() {
  # The first local cluster, started if needed; a login role the store tests may create
  # scratch databases with.
  local version cluster
  read -r version cluster < <(pg_lsclusters --no-header | awk 'NR==1 {print $1, $2}')
  as_root pg_ctlcluster "$version" "$cluster" start 2>/dev/null || true
  as_root runuser -u postgres -- psql -q -c \
    "DO \$\$ BEGIN CREATE ROLE hivecell LOGIN CREATEDB PASSWORD 'hivecell'; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;"
  # DROP DATABASE ... WITH (FORCE) must also end an autovacuum worker busy in a scratch
  # database; without this role the drop fails with "must be a member of ... pg_signal_backend".
  as_root runuser -u postgres -- psql -q -c "SET client_min_messages TO warning; GRANT pg_signal_backend TO hivecell;"
  local port
  port=$(pg_lsclusters --no-header | awk 'NR==1 {print $3}')
  export HIVECELL_TEST_POSTGRES_URL="postgresql+asyncpg://hivecell:hivecell@127.0.0.1:${port}/postgres"
}

run_tests() {
  start_postgres
  # Tests that build a tool's venv (the Aider session test) use the same uv.
  PATH="$(dirname "$(command -v "$UV")"):$PATH"
  export PATH
  "$UV" run ruff check src tests
  "$UV" run ruff format --check src tests
  "$UV" run mypy
  # --durations: the slowest tests, to keep the suite well under its 30 minutes.
  "$UV" run pytest -q -n 2 --dist loadgroup -p no:cacheprovider --durations=40
}

mode="${1:-}"
case "$mode" in
  run|test) ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac
install_system
install_uv
install_python
shift
if [ "$mode" = run ]; then run_server "$@"; else run_tests; fi
