#!/bin/sh
# Entry point of the image (and usable as is outside it, e.g. under Slurm):
#   ray-head [ARGS]     start a Ray head on this host (port RAY_PORT, default 6379) and block
#   ray-worker [ARGS]   join the Ray cluster at RAY_HEAD_ADDRESS (host:port) and block
#   selftest [ARGS]     the README's test command, run in the installed source tree
#   anything else       python -m pipeline ARGS   (e.g. run --config /work/videolt.yaml --stage extract)
# A Ray node offers RAY_NUM_CPUS CPUs, by default the CPUs this container may use (VLTR_CPUS, else
# the CPU affinity and cgroup quota: `python -m manifests.resources`). RAY_NODE_IP picks the address
# this node announces when the host has several networks.
set -eu

ray_node_options() {
    cpus="${RAY_NUM_CPUS:-$(python -m manifests.resources)}"
    set -- "--num-cpus=$cpus"
    if [ -n "${RAY_NODE_IP:-}" ]; then
        set -- "$@" "--node-ip-address=$RAY_NODE_IP"
    fi
    echo "$@"
}

case "${1:-}" in
    ray-head)
        shift
        options="$(ray_node_options)"
        # shellcheck disable=SC2086  # options holds separate words
        exec ray start --head --port="${RAY_PORT:-6379}" --dashboard-host=0.0.0.0 $options --block "$@"
        ;;
    ray-worker)
        shift
        : "${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS to the Ray head as host:port, e.g. 10.0.0.5:6379}"
        options="$(ray_node_options)"
        # shellcheck disable=SC2086
        exec ray start --address="$RAY_HEAD_ADDRESS" $options --block "$@"
        ;;
    selftest)
        shift
        cd "$(dirname "$0")/.."
        exec python -m pytest "$@"
        ;;
    *)
        exec python -m pipeline "$@"
        ;;
esac
