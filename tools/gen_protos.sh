#!/usr/bin/env bash
# Regenerates the committed Python code of every proto under protos/.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
# The mypy-protobuf plugins live beside the interpreter.
export PATH="$(dirname "$py"):$PATH"
find protos -name '*_pb2*.py*' -delete
for dir in protos/delivery/v1 protos/mta/v1; do
  "$py" -m grpc_tools.protoc -I protos \
    --python_out=protos --grpc_python_out=protos \
    --mypy_out=protos --mypy_grpc_out=protos \
    "$dir"/*.proto
done
for pkg in protos/delivery protos/delivery/v1 protos/mta protos/mta/v1; do
  touch "$pkg/__init__.py"
done
