#!/usr/bin/env bash
# Regenerates the gRPC stubs of the host agent contract into wrenn_server/proto/_generated.
set -euo pipefail
cd "$(dirname "$0")/.."
out=wrenn_server/proto/_generated
python -m grpc_tools.protoc -I wrenn_server/proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  wrenn_server/proto/hostagent.proto
# protoc writes an absolute import; the stubs live inside a package.
sed -i 's/^import hostagent_pb2 as/from . import hostagent_pb2 as/' "$out/hostagent_pb2_grpc.py"
