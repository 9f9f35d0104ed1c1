#!/bin/sh
# Entry point of the image (and usable as is outside it, e.g. under Slurm):
#   ray-head [ARGS]     start a Ray head on this host (port RAY_PORT, default 6379) and block
#   ray-worker [ARGS]   join the Ray cluster at RAY_HEAD_ADDRESS (host:port) and block
#   selftest [ARGS]     the README's test command, run in the installed source tree
#   anything else       python -m pipeline ARGS   (e.g. run --config /work/videolt.yaml --stage extract)
# A Ray node offers RAY_NUM_CPUS CPUs, by default the CPUs this container may use (VLTR_CPUS, else
# the CPU affinity and cgroup quota: `python -m manifests.resources`). RAY_NODE_IP picks the address
# this node announces when the host has several networks.
#
# Ray token authentication (docs/cluster.md): every node and every driver of a cluster presents the
# same token. RAY_AUTH_MODE defaults to token; the token is RAY_AUTH_TOKEN, else the file
# RAY_AUTH_TOKEN_PATH (default /work/.ray/auth_token, on the work directory every host mounts).
# ray-head writes that file (mode 600) when it does not exist; ray-worker waits RAY_AUTH_WAIT_S
# seconds (default 120) for it; a driver (anything else) uses it when it exists.
# RAY_AUTH_MODE=disabled turns authentication off: only on a network no one else can reach, since
# anyone who reaches the head can then run code on every node.
set -eu

DEFAULT_TOKEN_PATH=/work/.ray/auth_token

ray_node_options() {
    cpus="${RAY_NUM_CPUS:-$(python -m manifests.resources)}"
    set -- "--num-cpus=$cpus"
    if [ -n "${RAY_NODE_IP:-}" ]; then
        set -- "$@" "--node-ip-address=$RAY_NODE_IP"
    fi
    echo "$@"
}

# ray_auth ROLE (head, worker or driver): export what Ray reads for token authentication.
ray_auth() {
    if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
        unset RAY_AUTH_TOKEN  # an empty value (e.g. from compose) is no token
    fi
    if [ "$1" = driver ] && [ -z "${RAY_AUTH_MODE:-}" ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
        && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$DEFAULT_TOKEN_PATH}" ]; then
        unset RAY_AUTH_TOKEN_PATH  # no cluster token here: a local Ray (if any) makes its own
        return 0
    fi
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
    if [ "$RAY_AUTH_MODE" != token ] || [ -n "${RAY_AUTH_TOKEN:-}" ]; then
        return 0
    fi
    export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$DEFAULT_TOKEN_PATH}"
    case "$1" in
        head) [ -s "$RAY_AUTH_TOKEN_PATH" ] || new_token "$RAY_AUTH_TOKEN_PATH" ;;
        worker) wait_for_token "$RAY_AUTH_TOKEN_PATH" "${RAY_AUTH_WAIT_S:-120}" ;;
    esac
}

# new_token PATH: a random token, readable by this user only, written under a temporary name first
# so that a worker never reads half of it.
new_token() {
    mkdir -p "$(dirname "$1")"
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(32))' > "$1.tmp.$$")
    mv "$1.tmp.$$" "$1"
    echo "ray-head: wrote a new Ray authentication token to $1" >&2
}

# wait_for_token PATH SECONDS: the head writes the token when it starts; fail after SECONDS.
wait_for_token() {
    waited=0
    while [ ! -s "$1" ]; do
        if [ "$waited" -ge "$2" ]; then
            echo "error: no Ray authentication token at RAY_AUTH_TOKEN_PATH=$1 after $2 s; start the head" \
                "(it writes the token there) with the same work directory mounted, or set RAY_AUTH_TOKEN" \
                "to the head's token" >&2
            exit 2
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

case "${1:-}" in
    ray-head)
        shift
        options="$(ray_node_options)"
        ray_auth head
        # shellcheck disable=SC2086  # options holds separate words
        exec ray start --head --port="${RAY_PORT:-6379}" --dashboard-host=0.0.0.0 $options --block "$@"
        ;;
    ray-worker)
        shift
        : "${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS to the Ray head as host:port, e.g. 10.0.0.5:6379}"
        options="$(ray_node_options)"
        ray_auth worker
        # shellcheck disable=SC2086
        exec ray start --address="$RAY_HEAD_ADDRESS" $options --block "$@"
        ;;
    selftest)
        shift
        cd "$(dirname "$0")/.."
        exec python -m pytest "$@"
        ;;
    *)
        ray_auth driver
        exec python -m pipeline "$@"
        ;;
esac
