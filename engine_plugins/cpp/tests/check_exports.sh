#!/bin/sh
# check_exports.sh LIBRARY: fails unless the shared library's dynamic symbol table defines the C ABI's avb_*
# functions and nothing else (no gRPC, protobuf, libopus or C++ runtime symbol an engine could clash with).
set -eu
library=$1
symbols=$(nm -D --defined-only "$library" | awk '{print $NF}' | sed 's/@.*//' | sort -u)
others=$(printf '%s\n' "$symbols" | grep -v -e '^avb_' -e '^AVATAR_CLIENT_1$' -e '^$' || true)
if [ -n "$others" ]; then
  echo "exported besides avb_*:" >&2
  printf '%s\n' "$others" | head -50 >&2
  exit 1
fi
# The header's functions must all be there (a version script that hid everything would also pass above).
header=$(dirname "$0")/../include/avatar_backend/avatar_client.h
expected=$(grep -o 'avb_[a-z_]*(' "$header" | tr -d '(' | sort -u)
missing=$(printf '%s\n' "$expected" | while read -r name; do
  printf '%s\n' "$symbols" | grep -qx "$name" || echo "$name"; done)
if [ -n "$missing" ]; then
  echo "declared in avatar_client.h but not exported:" >&2
  printf '%s\n' "$missing" >&2
  exit 1
fi
echo "exports: $(printf '%s\n' "$expected" | wc -l) avb_* functions and nothing else"
