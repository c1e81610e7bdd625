# Shared by docker/test.sh and docker/test-scale.sh (sourced, not run): a Docker engine, the
# Debian base image, and a build context made from the working tree.
#
# No image registry may be reachable, so debian:bookworm-slim is made locally with
# debootstrap when it cannot be pulled, and kept (every image here is built on it). Builds run
# with --network host; the CA bundle named by $SSL_CERT_FILE (a TLS-intercepting proxy's) and
# a torch wheel from $PIP_FIND_LINKS are copied into a temporary build context, never into
# the repository.

say() { printf '\n== %s\n' "$*"; }

now() { python3 -c "import time; print(time.time())"; }

since() { python3 -c "import time; print(f'{time.time() - $1:.1f}')"; }

# Starts dockerd when no engine answers (its log in $1/dockerd.log).
ensure_engine() {
    command -v docker >/dev/null || {
        echo "docker is missing: apt-get install docker.io debootstrap"
        return 1
    }
    docker info >/dev/null 2>&1 && return 0
    command -v dockerd >/dev/null || {
        echo "the docker CLI is here, but no Docker engine answers and dockerd is not installed:"
        echo "apt-get install docker.io debootstrap (docker.io brings dockerd), or set DOCKER_HOST"
        echo "to a running engine"
        return 1
    }
    say "starting dockerd"
    (dockerd >"$1/dockerd.log" 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
    cat "$1/dockerd.log"
    return 1
}

# debian:bookworm-slim: pulled, or made with debootstrap (in $1/rootfs) when no registry answers.
ensure_base() {
    docker image inspect debian:bookworm-slim >/dev/null 2>&1 && return 0
    if timeout 60 docker pull debian:bookworm-slim >/dev/null 2>&1; then
        say "pulled debian:bookworm-slim"
        return 0
    fi
    say "no registry reachable: making debian:bookworm-slim locally (debootstrap minbase)"
    command -v debootstrap >/dev/null || { echo "apt-get install debootstrap"; return 1; }
    debootstrap --variant=minbase bookworm "$1/rootfs" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$1/debootstrap.log" 2>&1 \
        || { tail -20 "$1/debootstrap.log"; return 1; }
    tar -C "$1/rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
    rm -rf "$1/rootfs"
}

# The build context in $1/context: the working tree's files (tracked and untracked, not
# ignored), this machine's CA, and with $2 = torch its torch wheel. Prints the docker build
# arguments that go with it (TORCH_INDEX= when a local wheel is there).
make_context() {
    local context="$1/context"
    mkdir -p "$context"
    git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$context" -xf -
    if [ -n "${SSL_CERT_FILE:-}" ] && [ -f "$SSL_CERT_FILE" ]; then
        cp "$SSL_CERT_FILE" "$context/docker/extra/ca/build-host.crt"
        echo "extra CA: \$SSL_CERT_FILE" >&2
    fi
    [ "${2:-}" = torch ] || return 0
    for dir in ${PIP_FIND_LINKS:-}; do
        if compgen -G "$dir/torch-*.whl" >/dev/null; then
            cp "$dir"/torch-*.whl "$context/docker/extra/wheels/"
            echo "torch: a local wheel from \$PIP_FIND_LINKS" >&2
            echo "--build-arg TORCH_INDEX="
            return 0
        fi
    done
}

# docker build of $2 (a Dockerfile) as $3 from the context in $1, further arguments passed on;
# the log in $1/build-<tag>.log, its tail on failure.
build_image() {
    local work=$1 dockerfile=$2 tag=$3
    shift 3
    local log="$work/build-${tag//[:\/]/-}.log" started
    started=$(date +%s)
    docker build --network host "$@" -f "$dockerfile" -t "$tag" "$work/context" >"$log" 2>&1 \
        || { tail -40 "$log"; return 1; }
    echo "$tag built in $(($(date +%s) - started)) s"
}
