#!/usr/bin/env bash
# Regenerates the committed Python code for proto/bastion/v1/*.proto into python/bastion/v1/.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (OUT_DIR defaults to python; the drift check passes a temp dir)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/python}
py=${PYTHON:-$(command -v python)}
[ -x "$here/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && py=$here/.venv/bin/python
mkdir -p "$out/bastion/v1"
"$py" -m grpc_tools.protoc -I "$here/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  --descriptor_set_out="$out/bastion/v1/bastion_v1.binpb" --include_imports \
  "$here"/proto/bastion/v1/*.proto
