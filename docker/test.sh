#!/usr/bin/env bash
# `make docker-test`: build the CPU image on this machine and use it the way a user would.
# `make docker-test-cuda` (docker/test.sh cuda): build the CUDA image here and check that it
# starts (on the CPU, where there is no GPU) and reports its CUDA build. Not in CI: its torch
# alone is several GB from PyPI.
#
# The engine, the Debian base (debootstrap when no registry answers) and the build context
# (this machine's CA and torch wheel, never written into the repository): docker/lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. docker/lib.sh

VARIANT=${1:-cpu}
case "$VARIANT" in
    cpu) DOCKERFILE=docker/Dockerfile ;;
    cuda) DOCKERFILE=docker/Dockerfile.cuda ;;
    *) echo "usage: docker/test.sh [cpu|cuda]"; exit 2 ;;
esac
IMAGE=embedsense:docker-test-$VARIANT
NAME=embedsense-docker-test-$VARIANT
VOLUME=embedsense-docker-test-$VARIANT-data
PORT=${EMBEDSENSE_TEST_PORT:-50151}
HTTP_PORT=${EMBEDSENSE_TEST_HTTP_PORT:-50152}
TARGET=127.0.0.1:$PORT
work=$(mktemp -d)

cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    docker volume rm "$VOLUME" >/dev/null 2>&1 || true
    # Untags only the layers another tag shares (embedsense:cpu, from docker-test-scale).
    docker rmi "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

ensure_engine "$work"
ensure_base "$work"

say "build context: the working tree's files, plus this machine's CA (and its torch wheel, for the CPU image)"
extra=$(make_context "$work" "$([ "$VARIANT" = cpu ] && echo torch)")
read -ra build_args <<<"$extra"

say "docker build"
build_image "$work" "$DOCKERFILE" "$IMAGE" "${build_args[@]}"

wait_serving() {  # seconds until `embedsense health` answers SERVING inside the container
    local start=$1
    for _ in $(seq 600); do
        if docker exec "$NAME" embedsense --target "$TARGET" health >/dev/null 2>&1; then
            python3 -c "import time; print(f'{time.time() - $start:.1f}')"
            return 0
        fi
        sleep 0.5
    done
    docker logs "$NAME" | tail -30
    return 1
}

say "docker run (network host, listening on $TARGET only)"
docker volume create "$VOLUME" >/dev/null
start=$(python3 -c "import time; print(time.time())")
docker run -d --name "$NAME" --network host -e EMBEDSENSE_HOST=127.0.0.1 \
    -e EMBEDSENSE_PORT="$PORT" -e EMBEDSENSE_HTTP_PORT="$HTTP_PORT" -v "$VOLUME:/data" \
    "$IMAGE" >/dev/null
cold=$(wait_serving "$start")
echo "cold start to SERVING: $cold s"
for _ in $(seq 60); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ] && break
    sleep 2
done
health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
echo "docker HEALTHCHECK: $health"
[ "$health" = healthy ]

uid=$(docker exec "$NAME" id -u)
echo "server process user id: $uid"
[ "$uid" != 0 ]

if [ "$VARIANT" = cuda ]; then
    say "the CUDA build, serving without a GPU"
    cuda=$(docker exec "$NAME" python -c "import torch; print(torch.version.cuda or '')")
    echo "torch $(docker exec "$NAME" python -c "import torch; print(torch.__version__)"), CUDA $cuda"
    [ -n "$cuda" ]
    served=$(docker exec "$NAME" embedsense --target "$TARGET" --json info | python3 -c \
        "import json, sys; info = json.load(sys.stdin); print(info['device'], info['dtype'])")
    echo "Info: device and dtype $served (auto, with no GPU in reach)"
    [ "${served%% *}" = cpu ]
    size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
    say "summary"
    echo "image $IMAGE: $((size / 1024 / 1024)) MiB; torch built for CUDA $cuda; cold start to"
    echo "SERVING ${cold} s on the CPU (no GPU here); HEALTHCHECK $health; user id $uid"
    echo "docker-test-cuda passed"
    exit 0
fi

say "the client demo, from the image, against the container"
docker run --rm --network host --entrypoint python "$IMAGE" -m embedsense.client.demo \
    --target "$TARGET" | tee "$work/demo.log" | grep -v '%|' || true
grep -q "我喜欢吃苹果 .* fruit" "$work/demo.log"
grep -q "我买了最新的苹果手机 .* company" "$work/demo.log"

say "HTTP: OpenAI's /v1/embeddings, /openapi.json and /docs on the running image"
python3 - "$HTTP_PORT" <<'PY'
import json, sys, urllib.request
body = json.dumps({"input": ["我喜欢吃苹果"], "model": "multilingual-e5-small"}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/embeddings", data=body,
                                 headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=60))
print(f"/v1/embeddings: {len(answer['data'][0]['embedding'])}-dim vector, "
      f"{answer['usage']['prompt_tokens']} tokens")
assert len(answer["data"][0]["embedding"]) == 384
# The newer dependencies at work in the image: pydantic's OpenAPI document, and the docs page
# with Swagger UI's own files from the swagger-ui-bundle package (served offline).
base = f"http://127.0.0.1:{sys.argv[1]}"
document = json.load(urllib.request.urlopen(f"{base}/openapi.json", timeout=60))
assert "/v1/embeddings" in document["paths"], sorted(document["paths"])
page = urllib.request.urlopen(f"{base}/docs", timeout=60).read().decode()
script = urllib.request.urlopen(f"{base}/docs/swagger-ui-bundle.js", timeout=60).read()
assert "swagger-ui" in page and len(script) > 100_000, (len(page), len(script))
print(f"/openapi.json: OpenAPI {document['openapi']}, {len(document['paths'])} paths; /docs: "
      f"Swagger UI served from the image ({len(script) // 1024} KiB bundle)")
PY

say "restart: the data must still be there"
docker restart "$NAME" >/dev/null
start=$(python3 -c "import time; print(time.time())")
warm=$(wait_serving "$start")  # an assignment: its failure stops the script (set -e)
echo "restart to SERVING: $warm s"
count=$(docker exec "$NAME" embedsense --target "$TARGET" --json collections \
    | python3 -c "import json, sys; print({c['name']: c['count'] for c in json.load(sys.stdin)}['demo'])")
echo "documents in 'demo' after the restart: $count"
[ "$count" = 201 ]

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "summary"
echo "image $IMAGE: $((size / 1024 / 1024)) MiB; cold start to SERVING ${cold} s; HEALTHCHECK $health;"
echo "user id $uid; demo: 我喜欢吃苹果 -> fruit, 我买了最新的苹果手机 -> company; $count documents kept"
echo "docker-test passed"
