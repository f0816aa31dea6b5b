#!/usr/bin/env bash
# One entry point for building, running and testing the avatar backend.
#
#   ./buildall.sh            set up: system packages, .venv, the package, generated stubs
#   ./buildall.sh demo       set up, start the embedded server, make a talking-NPC video (out/npc.mp4)
#   ./buildall.sh test       set up and run the test suite
#   ./buildall.sh bench      set up and run the benchmark (writes out/bench.json)
#   ./buildall.sh stubs      regenerate the stubs from proto/ (done by every target)
#
# Environment: PYTHON (default python3.11 or python3), VENV (default .venv),
# AVATAR_TORCH_INDEX (pip index for a CUDA torch build, see README "GPU").
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
SYSTEM_PACKAGES=(libopus0 espeak-ng)

log() { printf '\033[1m[buildall]\033[0m %s\n' "$*" >&2; }

system_packages() {
  local missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    log "install these system packages with your package manager: ${missing[*]} (macOS: brew install opus espeak-ng)"
    return 0
  fi
  if [ "$(id -u)" -eq 0 ]; then
    log "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing system packages; run: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
}

venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  fi
  if [ -n "${AVATAR_TORCH_INDEX:-}" ]; then
    "$VENV/bin/pip" install -q --index-url "$AVATAR_TORCH_INDEX" torch==2.13.0
  fi
  log "installing avatar-backend into $VENV"
  "$VENV/bin/pip" install -q -e ".[dev]"
}

stubs() {
  log "generating Python stubs from proto/"
  local out=avatar_backend/proto_gen
  find "$out" -name '*_pb2*.py*' -delete 2>/dev/null || true
  "$VENV/bin/python" -m grpc_tools.protoc -I proto \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    $(find proto -name '*.proto' | sort)
  for d in $(find "$out" -mindepth 1 -type d ! -name __pycache__); do
    [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
  done
}

setup() { system_packages; venv; stubs; }

case "${1:-setup}" in
  setup) setup ;;
  stubs) stubs ;;
  demo)
    setup
    exec "$VENV/bin/avatar-backend" demo --out out/npc.mp4
    ;;
  test)
    setup
    # The stubs are committed; in CI, regenerating them must not change them.
    if [ "${CI:-}" = true ] && git rev-parse --git-dir >/dev/null 2>&1 \
        && [ -n "$(git status --porcelain -- avatar_backend/proto_gen)" ]; then
      git status --short -- avatar_backend/proto_gen >&2
      log "the committed stubs are out of date with proto/: run ./buildall.sh stubs and commit the result"
      exit 1
    fi
    exec "$VENV/bin/python" -m pytest -ra "${@:2}"
    ;;
  bench)
    setup
    mkdir -p out
    exec "$VENV/bin/avatar-backend" bench --json out/bench.json
    ;;
  *) echo "usage: $0 [setup|demo|test|bench|stubs]" >&2; exit 2 ;;
esac
