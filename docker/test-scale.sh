#!/usr/bin/env bash
# `make docker-test-scale`: compose's `scale` profile on this machine, as a user runs it, and a
# replica killed under writes.
#
#   1. builds embedsense:cpu (docker/Dockerfile) and embedsense-milvus:2.3.5
#      (docker/Dockerfile.milvus: a real Milvus standalone) and keeps them for compose;
#   2. starts Milvus and 3 encoder replicas (milvus backend) in a project of its own, waits
#      until all are healthy, and runs the demo through dns:///encoder:50051 (gRPC round_robin
#      over Docker's DNS answers);
#   3. streams upserts through dns:///encoder:50051 (docker/scale_check.py) and SIGKILLs one
#      replica (docker kill -s KILL) once some are acknowledged; the stream goes on through
#      the others;
#   4. through one surviving replica: every acknowledged document is there, with its text,
#      and the count lies between the acknowledged and the sent documents.
#
# Every wait is bounded; on exit, pass or fail, the project's containers, network and volumes
# are removed. Nothing is published: all traffic stays on the project's bridge network.
# Uses `docker compose` (v2) when the CLI has it, else `docker-compose` (v1.29).
set -euo pipefail
cd "$(dirname "$0")/.."
. docker/lib.sh

PROJECT=${EMBEDSENSE_SCALE_PROJECT:-embedsense-scale-test}
REPLICAS=3
COLLECTION=kill-test
WRITE_S=${EMBEDSENSE_SCALE_WRITE_S:-45}  # the stream's length; the kill lands inside it
KILL_AFTER=${EMBEDSENSE_SCALE_KILL_AFTER:-40}  # acknowledged documents before the kill
WRITER=$PROJECT-writer
work=$(mktemp -d)
chmod 755 "$work"  # the containers' user (uid 10001) reads the check script and result here

if docker compose version >/dev/null 2>&1; then
    compose() { docker compose -p "$PROJECT" -f docker/compose.yaml --profile scale "$@"; }
    compose_version=$(docker compose version)
elif command -v docker-compose >/dev/null; then
    compose() { docker-compose -p "$PROJECT" -f docker/compose.yaml --profile scale "$@"; }
    compose_version=$(docker-compose --version)
else
    echo "neither \`docker compose\` nor docker-compose: apt-get install docker-compose"
    exit 1
fi

cleanup() {
    local status=$?
    if [ "$status" != 0 ] && docker info >/dev/null 2>&1; then
        say "failed: the last log lines of each container"
        for id in $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
            echo "-- $(docker inspect -f '{{.Name}}' "$id")"
            docker logs --tail 15 "$id" 2>&1 || true
        done
    fi
    docker rm -f "$WRITER" >/dev/null 2>&1 || true
    # `compose run` containers too: every container of the project, then its network and volumes.
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker rm -f \
        >/dev/null 2>&1 || true
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

ensure_engine "$work"
ensure_base "$work"

say "build context: the working tree's files, plus this machine's CA and torch wheel"
extra=$(make_context "$work" torch)
read -ra build_args <<<"$extra"

say "docker build (the shared Debian layers once, then each image's own)"
build_image "$work" docker/Dockerfile embedsense:cpu "${build_args[@]}"
build_image "$work" docker/Dockerfile.milvus embedsense-milvus:2.3.5

# seconds until every container of a service is healthy (bounded by $2 seconds)
wait_healthy() {
    local service=$1 limit=$2 start ids healthy
    start=$(now)
    for _ in $(seq "$limit"); do
        ids=$(compose ps -q "$service")
        healthy=0
        for id in $ids; do
            [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] \
                && healthy=$((healthy + 1))
            # A server that cannot start exits (and is restarted): fail now, not at the limit.
            if [ "$(docker inspect -f '{{.RestartCount}} {{.State.Status}}' "$id")" != "0 running" ]; then
                echo "$service: $(docker inspect -f '{{.Name}}' "$id") exited:" >&2
                docker logs --tail 20 "$id" >&2 2>&1
                return 1
            fi
        done
        if [ -n "$ids" ] && [ "$healthy" = "$(wc -w <<<"$ids")" ]; then
            since "$start"
            return 0
        fi
        sleep 1
    done
    echo "$service: not healthy within $limit s" >&2
    return 1
}

say "up: Milvus and $REPLICAS encoder replicas (project $PROJECT)"
started=$(now)
compose up -d --no-build milvus
took=$(wait_healthy milvus 300)  # an assignment: its failure stops the script (set -e)
echo "Milvus healthy after $took s"
compose up -d --no-build --scale encoder=$REPLICAS encoder
took=$(wait_healthy encoder 300)
echo "$REPLICAS encoders healthy after $took s more"
echo "stack up in $(since "$started") s"
network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' \
    "$(compose ps -q milvus)")

say "the demo through dns:///encoder:50051"
compose run --rm -T --no-deps demo-scale 2>&1 | tee "$work/demo.log" | grep -v '%|' || true
grep -q "我喜欢吃苹果 .* fruit" "$work/demo.log"
grep -q "我买了最新的苹果手机 .* company" "$work/demo.log"

say "a stream of upserts through dns:///encoder:50051; SIGKILL one replica during it"
cp docker/scale_check.py "$work/"
chmod 644 "$work/scale_check.py"
docker run -d --name "$WRITER" --network "$network" -v "$work:/check:ro" --entrypoint python \
    embedsense:cpu -u /check/scale_check.py write --target dns:///encoder:50051 \
    --collection "$COLLECTION" --seconds "$WRITE_S" >/dev/null
for _ in $(seq 120); do
    [ "$(docker logs "$WRITER" 2>&1 | grep '^acked ' | tail -1 | cut -d' ' -f2)" -ge "$KILL_AFTER" ] \
        2>/dev/null && break
    [ "$(docker inspect -f '{{.State.Running}}' "$WRITER")" = true ] || break
    sleep 0.5
done
[ "$(docker inspect -f '{{.State.Running}}' "$WRITER")" = true ] \
    || { docker logs "$WRITER" | tail -20; echo "the writer ended before the kill"; exit 1; }
# sed, not head: head would close the pipe early, and pipefail would end the script (141).
victim=$(compose ps -q encoder | sed -n 1p)
acked_at_kill=$(docker logs "$WRITER" 2>&1 | grep '^acked ' | tail -1 | cut -d' ' -f2 || true)
acked_at_kill=${acked_at_kill:-0}
docker kill -s KILL "$victim" >/dev/null
killed_at=$(now)
echo "SIGKILL to $(docker inspect -f '{{.Name}}' "$victim") after $acked_at_kill acknowledged documents"
timeout $((WRITE_S + 240)) docker wait "$WRITER" >"$work/writer.status"
[ "$(cat "$work/writer.status")" = 0 ] || { docker logs "$WRITER" | tail -20; exit 1; }
docker logs "$WRITER" 2>/dev/null | sed -n 's/^result //p' >"$work/result.json"
chmod 644 "$work/result.json"
read -r acked_total sent_total failed slowest <<<"$(python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(len(r['acked']), len(r['sent']), len(r['failures']), r['slowest_s'])
for f in r['failures'][:5]:
    print(f, file=sys.stderr)" "$work/result.json")"
echo "writer: $acked_total acknowledged, $sent_total sent, $failed calls failed after retries;"
echo "$((acked_total - acked_at_kill)) acknowledged after the kill, in $(since "$killed_at") s;"
echo "the slowest upsert (retries included) took $slowest s"
echo "the killed replica, after: $(docker inspect -f '{{.State.Status}}, restarted {{.RestartCount}} times' "$victim")"
[ "$acked_total" -gt "$acked_at_kill" ]  # the stream went on through the survivors

say "every acknowledged document, through a surviving replica"
survivor=$(compose ps -q encoder | grep -v "^${victim:0:12}" | sed -n 1p)
address=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$survivor")
echo "asking $(docker inspect -f '{{.Name}}' "$survivor") at $address:50051"
docker run --rm --network "$network" -v "$work:/check:ro" --entrypoint python embedsense:cpu \
    /check/scale_check.py verify --target "$address:50051" --collection "$COLLECTION" \
    --result /check/result.json

say "summary"
echo "Milvus 2.3.5 + $REPLICAS encoders + the demo through dns:///encoder; one replica SIGKILLed"
echo "after $acked_at_kill of $acked_total acknowledged documents: all $acked_total there;"
echo "$SECONDS s in all; $compose_version, Docker $(docker version -f '{{.Server.Version}}')"
echo "docker-test-scale passed"
