# The targets that run Python use .venv, created on first use. torch goes in first, as its
# CPU build: PyPI's Linux torch wheel is the CUDA one, several GB of CUDA libraries. As in
# docker/Dockerfile: on Linux `torch==2.13.0+cpu` from TORCH_INDEX (PyTorch's CPU wheel
# index; `make install TORCH_INDEX=` for none, e.g. behind a mirror or with PIP_FIND_LINKS);
# elsewhere PyPI's `torch==2.13.0`, which is a CPU build there.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SPEC := torch==2.13.0$(if $(filter Linux,$(shell uname -s)),+cpu)
STAMP := $(VENV)/.installed

.PHONY: install test lint format bench bench-frontend eval load faults demo pictures serve proto docker-test docker-test-scale docker-test-cuda gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[server,milvus,plot,dev]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cuda docker/Dockerfile.milvus
	$(BIN)/kubernetes-validate --strict --quiet docker/k8s/*.yaml
	# The docs site: a broken link, a missing page or a stale generated page fails the build.
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when it collects nothing: that fails the target, as it should.
test: lint
	$(BIN)/python -m pytest

bench: install
	cd tests/bench && for script in bench_*.py; do ../../$(BIN)/python "$$script" || exit 1; done

# The front end's own capacity around a stand-in model (tests/bench/standin.py): texts/s and
# host cost per text, before and with micro-batched tokenizing, and with two front-end
# processes (--frontends 2), side by side.
bench-frontend: install
	cd tests/bench && ../../$(BIN)/python bench_frontend.py --frontends 2

# Word-sense accuracy per word and layer choice, with and without centring; induction purity.
eval: install
	$(BIN)/python tests/eval_senses.py

# 64 clients mixing Embed, Search and Upsert for 5 minutes, on 127.0.0.1 (bounded); also
# the server's peak RSS, the swing of its 30-s samples and the predicted peak. Options via
# LOAD_ARGS, e.g. make load LOAD_ARGS="--seconds 600 --dtype float32".
load: install
	$(BIN)/python tests/ops/load.py $(LOAD_ARGS)

# SIGKILL mid-stream, 20 rounds: nothing acknowledged may be lost; retries across a restart.
faults: install
	$(BIN)/python tests/ops/faults.py

# Starts a server on the offline default model, indexes the bundled corpus, searches it,
# tells the senses of 苹果 apart, stops the server.
demo: install
	$(BIN)/python -m embedsense.client.demo

# The demo, then the README's attention pictures from two of its corpus sentences, and the
# explanation page's pictures taken by headless Chromium (apt-get install chromium).
pictures: install
	$(BIN)/python -m embedsense.client.demo --pictures client/data
	$(BIN)/python tests/ops/screenshots.py client/data

# gRPC on 127.0.0.1:50051 and HTTP on 127.0.0.1:8080, as in the README's Quick start.
serve: install
	$(BIN)/embedsense serve --data-dir data --port 50051 --http-port 8080

# The Python gRPC code in proto/v1 from proto/embedsense/v1 (a test fails when it is stale).
proto: install
	$(BIN)/python proto/generate.py

# Builds the CPU image here and runs it as a user would (needs a Docker engine; see README).
docker-test:
	bash docker/test.sh

# Compose's scale profile here: a real Milvus (docker/Dockerfile.milvus), 3 encoder replicas and
# the demo through dns:///encoder; one replica SIGKILLed during a stream of upserts, then every
# acknowledged document checked (needs a Docker engine and Compose v2 or docker-compose 1.29).
# Its own compose project (not the `embedsense` one); removed afterwards, images kept.
docker-test-scale:
	bash docker/test-scale.sh

# Builds the CUDA image here (torch's CUDA wheel from PyPI, several GB) and checks that it
# starts without a GPU and reports its CUDA build. Not in CI.
docker-test-cuda:
	bash docker/test.sh cuda

# On a CUDA machine whose Python has torch (no install: the project runs from the tree), in
# order, each step with its own time limit: the CUDA tests; the whole service in fp16 over
# gRPC (bench_gpu.py --service-only); the front end's capacity (bench_frontend.py); the
# engine at the bert-base-chinese shape in fp32/fp16/bf16 (bench_gpu.py). Each benchmark
# prints its own JSON line; the service and front-end steps are skipped when the server's
# packages are missing. Not in CI.
gpu-check:
	bash tests/ops/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
