#!/usr/bin/env bash
# `make docker-test`: build the CPU image on this machine and use it the way a user would.
# `make docker-test-cuda` (docker/test.sh cuda): build the CUDA image here and check that it
# starts (on the CPU, where there is no GPU) and reports its CUDA build. Not in CI: its torch
# alone is several GB from PyPI.
#
# No image registry may be reachable, so the debian:bookworm-slim base is made locally with
# debootstrap when it cannot be pulled. The build runs with --network host; the CA bundle
# named by $SSL_CERT_FILE (a TLS-intercepting proxy's) and a torch wheel from $PIP_FIND_LINKS
# are copied into a temporary build context, never into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

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
made_base=0

say() { printf '\n== %s\n' "$*"; }

cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    docker volume rm "$VOLUME" >/dev/null 2>&1 || true
    docker rmi "$IMAGE" >/dev/null 2>&1 || true
    if [ "$made_base" = 1 ]; then docker rmi debian:bookworm-slim >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

command -v docker >/dev/null || { echo "docker is missing: apt-get install docker.io debootstrap"; exit 1; }
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || {
        echo "the docker CLI is here, but no Docker engine answers and dockerd is not installed:"
        echo "apt-get install docker.io debootstrap (docker.io brings dockerd), or set DOCKER_HOST"
        echo "to a running engine"
        exit 1
    }
    say "starting dockerd"
    (dockerd >"$work/dockerd.log" 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { cat "$work/dockerd.log"; exit 1; }
fi

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    if timeout 60 docker pull debian:bookworm-slim >/dev/null 2>&1; then
        say "pulled debian:bookworm-slim"
    else
        say "no registry reachable: making debian:bookworm-slim locally (debootstrap minbase)"
        debootstrap --variant=minbase bookworm "$work/rootfs" \
            "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 \
            || { tail -20 "$work/debootstrap.log"; exit 1; }
        tar -C "$work/rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
        made_base=1
    fi
fi

say "build context: the working tree's files, plus this machine's CA (and its torch wheel, for the CPU image)"
context="$work/context"
mkdir -p "$context"
git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$context" -xf -
build_args=()
if [ -n "${SSL_CERT_FILE:-}" ] && [ -f "$SSL_CERT_FILE" ]; then
    cp "$SSL_CERT_FILE" "$context/docker/extra/ca/build-host.crt"
    echo "extra CA: \$SSL_CERT_FILE"
fi
for dir in $([ "$VARIANT" = cpu ] && echo "${PIP_FIND_LINKS:-}"); do
    if compgen -G "$dir/torch-*.whl" >/dev/null; then
        cp "$dir"/torch-*.whl "$context/docker/extra/wheels/"
        build_args+=(--build-arg TORCH_INDEX=)
        echo "torch: a local wheel from \$PIP_FIND_LINKS"
    fi
done

say "docker build"
started=$(date +%s)
docker build --network host "${build_args[@]}" -f "$DOCKERFILE" -t "$IMAGE" "$context" \
    >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
echo "built in $(($(date +%s) - started)) s"

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

say "HTTP: OpenAI's /v1/embeddings on the running image"
python3 - "$HTTP_PORT" <<'PY'
import json, sys, urllib.request
body = json.dumps({"input": ["我喜欢吃苹果"], "model": "multilingual-e5-small"}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/embeddings", data=body,
                                 headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=60))
print(f"/v1/embeddings: {len(answer['data'][0]['embedding'])}-dim vector, "
      f"{answer['usage']['prompt_tokens']} tokens")
assert len(answer["data"][0]["embedding"]) == 384
PY

say "restart: the data must still be there"
docker restart "$NAME" >/dev/null
start=$(python3 -c "import time; print(time.time())")
echo "restart to SERVING: $(wait_serving "$start") s"
count=$(docker exec "$NAME" embedsense --target "$TARGET" --json collections \
    | python3 -c "import json, sys; print({c['name']: c['count'] for c in json.load(sys.stdin)}['demo'])")
echo "documents in 'demo' after the restart: $count"
[ "$count" = 201 ]

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "summary"
echo "image $IMAGE: $((size / 1024 / 1024)) MiB; cold start to SERVING ${cold} s; HEALTHCHECK $health;"
echo "user id $uid; demo: 我喜欢吃苹果 -> fruit, 我买了最新的苹果手机 -> company; $count documents kept"
echo "docker-test passed"
