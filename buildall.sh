#!/usr/bin/env bash
# One entry point for building, running and testing the avatar backend.
#
#   ./buildall.sh            set up: system packages, .venv, the package, generated stubs
#   ./buildall.sh demo       set up, start the embedded server, make a talking-NPC video (out/npc.mp4)
#   ./buildall.sh test       set up, check proto/ with buf (lint, breaking) and run the test suite
#   ./buildall.sh lint       only the buf checks: lint proto/, and breaking changes against the baseline
#   ./buildall.sh breaking-baseline [REF]
#                            rebuild proto/breaking-baseline.binpb from the contract at REF (default HEAD);
#                            run it after a contract release, on the release commit, and commit the result
#   ./buildall.sh bench      set up and run the benchmark (writes out/bench.json)
#   ./buildall.sh stubs      regenerate the stubs from proto/ (done by every target)
#   ./buildall.sh cpp        build the engine plugins' native client core (engine_plugins/cpp) and its sample
#
# Environment: PYTHON (default python3.11 or python3), VENV (default .venv),
# AVATAR_TORCH_INDEX (pip index for a CUDA torch build, see README "The published model").
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
SYSTEM_PACKAGES=(libopus0 espeak-ng)
# For tests/contract: protoc's C# generator and mono's C# compiler.
SYSTEM_PACKAGES+=(protobuf-compiler mono-mcs mono-runtime gcc)
# The engine plugins' native client core (engine_plugins/cpp): grpc++ and its protoc plugin, libopus,
# TurboJPEG, GoogleTest.
SYSTEM_PACKAGES+=(protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev libopus-dev libturbojpeg0-dev libgtest-dev pkg-config)
# The C# stubs of the Unity package: protoc's C# generator and grpc's C# plugin, which Debian does not ship;
# it is built from the grpc sources in the grpcio-tools source distribution, against Debian's libprotoc.
SYSTEM_PACKAGES+=(libprotoc-dev)
GRPC_TOOLS_VERSION=1.85.1
CSHARP_PLUGIN=.tools/grpc_csharp_plugin-$GRPC_TOOLS_VERSION
CSHARP_OUT=engine_plugins/unity/Runtime/Contract/Generated
CPP_DIR=engine_plugins/cpp
CPP_BUILD=${CPP_BUILD:-$CPP_DIR/build}
# buf (protobuf lint and breaking-change checks) from npm, installed into a git-ignored folder.
BUF_VERSION=1.75.0
BUF=.tools/node_modules/.bin/buf
BUF_BASELINE=proto/breaking-baseline.binpb

log() { printf '\033[1m[buildall]\033[0m %s\n' "$*" >&2; }

system_packages() {
  local missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  # Any node install will do for buf; Debian's npm only where there is none.
  command -v npm >/dev/null 2>&1 || missing+=(npm)
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

# The C++ stubs are committed (engine_plugins/cpp/generated) and must be byte-for-byte what this protoc makes;
# the version that made them is recorded beside them.
cpp_stubs() {
  local out=$CPP_DIR/generated
  if ! command -v grpc_cpp_plugin >/dev/null 2>&1; then
    log "grpc_cpp_plugin not found (Debian: apt-get install protobuf-compiler-grpc); C++ stubs not regenerated"
    return 0
  fi
  log "generating C++ stubs from proto/ into $out"
  local tmp
  tmp=$(mktemp -d)
  protoc -I proto --cpp_out="$tmp" --grpc_out="$tmp" --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" \
    $(find proto/avatar/v1 -name '*.proto' | sort)
  printf '# Made by: ./buildall.sh stubs\nprotoc %s\ngrpc_cpp_plugin from %s\n' "$(protoc --version | sed 's/^libprotoc //')" \
    "$(dpkg-query -W -f='protobuf-compiler-grpc ${Version}' protobuf-compiler-grpc 2>/dev/null || echo unknown)" \
    > "$tmp/PROTOC_VERSION"
  # Replace only what changed, so that an unchanged contract does not rebuild the core.
  sync_generated "$tmp" "$out"
  rm -rf "$tmp"
}

# Copy what changed from a freshly generated folder into a committed one (and remove what is gone), so
# unchanged stubs keep their timestamps and generated files are compared byte for byte.
sync_generated() {
  local fresh=$1 out=$2
  (cd "$fresh" && find . -type f) | while read -r f; do
    cmp -s "$fresh/$f" "$out/$f" || { mkdir -p "$(dirname "$out/$f")"; cp "$fresh/$f" "$out/$f"; }
  done
  [ ! -d "$out" ] || (cd "$out" && find . -type f) | while read -r f; do
    [ -f "$fresh/$f" ] || rm "$out/$f"
  done
}

csharp_plugin() {
  [ -x "$CSHARP_PLUGIN" ] && return 0
  log "building grpc_csharp_plugin from the grpcio-tools $GRPC_TOOLS_VERSION sources"
  local tmp src
  tmp=$(mktemp -d)
  # The source distribution only: its build requirements may come as wheels.
  "$VENV/bin/pip" download -q --no-deps --no-binary grpcio-tools "grpcio-tools==$GRPC_TOOLS_VERSION" -d "$tmp"
  tar -xzf "$tmp"/grpcio_tools-*.tar.gz -C "$tmp"
  src=$tmp/grpcio_tools-$GRPC_TOOLS_VERSION/grpc_root
  # grpc's sources name protobuf's C# naming helpers by their newer header; Debian's libprotoc has them in
  # csharp_names.h. The plugin's own hook for that (GRPC_CUSTOM_CSHARP_*) points it there.
  cat > "$tmp/csharp_names.h" <<'NAMES'
#include <google/protobuf/compiler/csharp/csharp_names.h>
#define GRPC_CUSTOM_CSHARP_GETCLASSNAME ::google::protobuf::compiler::csharp::GetClassName
#define GRPC_CUSTOM_CSHARP_GETFILENAMESPACE ::google::protobuf::compiler::csharp::GetFileNamespace
#define GRPC_CUSTOM_CSHARP_GETOUTPUTFILE ::google::protobuf::compiler::csharp::GetOutputFile
#define GRPC_CUSTOM_CSHARP_GETREFLECTIONCLASSNAME ::google::protobuf::compiler::csharp::GetReflectionClassName
NAMES
  mkdir -p .tools
  g++ -std=c++17 -O2 -I"$src" -include "$tmp/csharp_names.h" -o "$CSHARP_PLUGIN" \
    "$src/src/compiler/csharp_generator.cc" "$src/src/compiler/csharp_plugin.cc" \
    "$src/src/compiler/proto_parser_helper.cc" -lprotoc -lprotobuf -lpthread
  rm -rf "$tmp"
}

# The C# messages and service client of the public contract, for Unity users who prefer a managed transport
# (grpc-dotnet); committed into the Unity package like the other stubs.
csharp_stubs() {
  if ! command -v g++ >/dev/null 2>&1 || ! dpkg -s libprotoc-dev >/dev/null 2>&1; then
    log "g++ or libprotoc-dev missing (Debian: apt-get install g++ libprotoc-dev); C# stubs not regenerated"
    return 0
  fi
  csharp_plugin
  log "generating C# stubs from proto/ into $CSHARP_OUT"
  local tmp
  tmp=$(mktemp -d)
  protoc -I proto --csharp_out="$tmp" --grpc_out="$tmp" --plugin=protoc-gen-grpc="$CSHARP_PLUGIN" \
    $(find proto/avatar/v1 -name '*.proto' | sort)
  printf '# Made by: ./buildall.sh stubs\nprotoc %s\ngrpc_csharp_plugin from grpcio-tools %s\n' \
    "$(protoc --version | sed 's/^libprotoc //')" "$GRPC_TOOLS_VERSION" > "$tmp/PROTOC_VERSION"
  sync_generated "$tmp" "$CSHARP_OUT"
  rm -rf "$tmp"
}

# Release build of the core, its unit tests and the avatar_say sample (outputs in the git-ignored $CPP_BUILD).
cpp_build() {
  log "building $CPP_DIR (Release) into $CPP_BUILD"
  cmake -S "$CPP_DIR" -B "$CPP_BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$CPP_BUILD" -j2
}

setup() { system_packages; venv; stubs; }

buf_tool() {
  [ "$("$BUF" --version 2>/dev/null)" = "$BUF_VERSION" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    log "buf needs npm: install Node.js (Debian: apt-get install npm)"
    exit 1
  fi
  log "installing buf $BUF_VERSION into .tools/"
  npm install --prefix .tools --save-exact --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION"
}

# Lint proto/ and check the public contract for breaking changes against the last released one
# (rules and exceptions: buf.yaml).
proto_checks() {
  buf_tool
  log "buf lint"
  "$BUF" lint
  log "buf breaking against $BUF_BASELINE (the contract of commit $(cat "${BUF_BASELINE%.binpb}.commit"))"
  "$BUF" breaking --against "$BUF_BASELINE"
}

# The baseline is committed because CI's fresh clone has no release branch or tag to compare with.
breaking_baseline() {
  local commit tmp buf
  commit=$(git rev-parse --verify "${1:-HEAD}^{commit}")
  buf_tool
  buf=$(pwd)/$BUF
  tmp=$(mktemp -d)
  git archive "$commit" proto | tar -x -C "$tmp"
  cp buf.yaml "$tmp/"
  log "building $BUF_BASELINE from the public contract at $commit"
  (cd "$tmp" && "$buf" build --path proto/avatar/v1 --exclude-source-info -o image.binpb)
  cp "$tmp/image.binpb" "$BUF_BASELINE"
  echo "$commit" > "${BUF_BASELINE%.binpb}.commit"
  rm -rf "$tmp"
  log "review and commit $BUF_BASELINE and ${BUF_BASELINE%.binpb}.commit"
}

case "${1:-setup}" in
  setup) setup ;;
  stubs) stubs; cpp_stubs; csharp_stubs ;;
  cpp) system_packages; cpp_stubs; cpp_build ;;
  lint) proto_checks ;;
  breaking-baseline) breaking_baseline "${@:2}" ;;
  demo)
    setup
    exec "$VENV/bin/avatar-backend" demo --out out/npc.mp4
    ;;
  test)
    setup
    cpp_stubs
    csharp_stubs
    # The stubs are committed; in CI, regenerating them must not change them.
    if [ "${CI:-}" = true ] && git rev-parse --git-dir >/dev/null 2>&1 \
        && [ -n "$(git status --porcelain -- avatar_backend/proto_gen "$CPP_DIR/generated" "$CSHARP_OUT")" ]; then
      git status --short -- avatar_backend/proto_gen "$CPP_DIR/generated" "$CSHARP_OUT" >&2
      log "the committed stubs are out of date with proto/: run ./buildall.sh stubs and commit the result"
      exit 1
    fi
    proto_checks
    cpp_build
    log "ctest (the native core's unit tests and its exported-symbols check)"
    ctest --test-dir "$CPP_BUILD" --output-on-failure
    exec "$VENV/bin/python" -m pytest -ra "${@:2}"
    ;;
  bench)
    setup
    mkdir -p out
    exec "$VENV/bin/avatar-backend" bench --json out/bench.json
    ;;
  *) echo "usage: $0 [setup|demo|test|bench|stubs|cpp|lint|breaking-baseline [REF]]" >&2; exit 2 ;;
esac
