#!/usr/bin/env bash
# shellcheck disable=SC2317  # the steps, run through step(), look unreachable to shellcheck
# Build docker/Dockerfile on this host with buildah (no Docker engine needed) and try the image as a
# user would: the checks of docker/check_image.py, then `selftest` and the demo (`run`) as uid 1000
# on a mounted work directory. Prints the time of every step; see docs/cluster.md.
#
#   docker/build-local.sh [OUT_DIR]       OUT_DIR default: runs/image in the build context
#
# OUT_DIR receives build.log, summary.txt (times, size, checks), image-files.txt (the source tree in
# the image), size.txt and work/ (the demo's work directory, written by uid 1000).
# Environment:
#   VLTR_CONTEXT        build context (default: the repository holding this script)
#   VLTR_IMAGE          tag to build (default: localhost/vltr-pipeline:local)
#   VLTR_BASE_IMAGE     base image (default: a Debian bookworm minbase root made with debootstrap and
#                       imported as localhost/vltr-base:bookworm; reused when that image exists)
#   DEBIAN_MIRROR       debootstrap's mirror (default: the first Debian mirror apt uses here)
#   VLTR_SELFTEST_ARGS  pytest arguments of `selftest` (default: DEFAULT_SELFTEST below, the image's
#                       own tests, manifests and evaluation; "all": the whole default suite)
#   VLTR_SKIP_DEMO=1    build, check and selftest only
#   STORAGE_DRIVER      buildah's storage driver (default: buildah's own, overlay where the kernel
#                       allows it); vfs inside a container without overlay mounts, where every build
#                       step holds a full copy of the image: budget ten times its size in disk
# pip inside the build gets this host's pip settings (environment, else `pip config`): index URLs as
# build args, local index and wheel directories as read-only build volumes, the CA bundle as the
# build secret `pip_cert`. Needs root, buildah and debootstrap (apt-get install buildah debootstrap);
# RUN steps use chroot isolation (BUILDAH_ISOLATION).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CONTEXT="$(cd "${VLTR_CONTEXT:-$HERE/..}" && pwd)"
OUT="$(mkdir -p "${1:-$CONTEXT/runs/image}" && cd "${1:-$CONTEXT/runs/image}" && pwd)"
IMAGE="${VLTR_IMAGE:-localhost/vltr-pipeline:local}"
BASE="${VLTR_BASE_IMAGE:-localhost/vltr-base:bookworm}"
DEFAULT_SELFTEST="tests/pipeline/test_docker.py tests/manifests tests/evaluate -q -rs"
SELFTEST="${VLTR_SELFTEST_ARGS-$DEFAULT_SELFTEST}"
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
# buildah 1.28 ignores the STORAGE_DRIVER variable: it is passed as an option when set
BUILDAH=(buildah ${STORAGE_DRIVER:+--storage-driver "$STORAGE_DRIVER"})
SUMMARY="$OUT/summary.txt"
CONTAINER=""

die() { echo "build-local: $*" >&2; exit 2; }

# Run "$@" as the step named $1 (the rest is the command); its time goes to the summary.
step() {
    local name="$1" start=$SECONDS
    shift
    echo "== $name"
    "$@"
    printf '%-28s %6d s\n' "$name" $((SECONDS - start)) | tee -a "$SUMMARY"
}

# A pip setting of this host: PIP_<NAME> from the environment, else `pip config get global.<name>`.
pip_setting() {
    local variable
    variable="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!variable:-}" ]; then echo "${!variable}"; return; fi
    python3 -m pip config get "global.$1" 2>/dev/null || true
}

# The host directory a local pip location needs (an index's parent holds the files its pages link).
local_directory() {
    local path="${1#file://}"
    case "$1" in file://*|/*) ;; *) return 0 ;; esac
    [ -d "$path" ] || return 0
    if [ "$(basename "$path")" = simple ]; then dirname "$path"; else echo "$path"; fi
}

# Its arguments on one line, separated by single spaces.
words() { echo "$*"; }

# Fill BUILD_ARGS with the host's pip settings: build args, local directories, the CA secret.
pip_build_args() {
    local index extra links cert location directory
    index="$(pip_setting index-url)"; extra="$(pip_setting extra-index-url)"
    links="$(pip_setting find-links)"; cert="$(pip_setting cert)"
    # shellcheck disable=SC2086  # several locations, split on whitespace as pip does
    BUILD_ARGS=(--build-arg "PIP_INDEX_URL=${index:-https://pypi.org/simple}"
                --build-arg "TORCH_INDEX=${index:-https://pypi.org/simple}"
                --build-arg "PIP_EXTRA_INDEX_URL=$(words $extra)" --build-arg "PIP_FIND_LINKS=$(words $links)")
    for location in $index $extra $links; do
        directory="$(local_directory "$location")"
        [ -n "$directory" ] && BUILD_ARGS+=(--volume "$directory:$directory:ro")
    done
    if [ -n "$cert" ]; then
        [ -f "$cert" ] || die "pip's CA bundle $cert (PIP_CERT or pip config global.cert) is not a file"
        BUILD_ARGS+=(--secret "id=pip_cert,src=$cert" --build-arg PIP_CERT=/run/secrets/pip_cert)
    fi
    HOST_CA="${cert:-/etc/ssl/certs/ca-certificates.crt}"
}

# The Debian mirror apt uses on this host (deb822 or one-line sources), else deb.debian.org.
debian_mirror() {
    local mirror
    mirror="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ')"
    echo "${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
}

debootstrap_base() {
    ROOTFS="$(mktemp -d /var/tmp/vltr-rootfs.XXXXXX)"
    debootstrap --variant=minbase bookworm "$ROOTFS/root" "$(debian_mirror)" > "$OUT/debootstrap.log" 2>&1 \
        || die "debootstrap failed: see $OUT/debootstrap.log"
}

# A tar keeps the owners of the root's files (buildah copy would make them root's); no device nodes,
# no downloaded packages, and apt set to drop the packages it downloads later, as Debian's own images.
import_base() {
    rm -f "$ROOTFS"/root/var/cache/apt/archives/*.deb "$ROOTFS"/root/var/cache/apt/*.bin
    printf '%s\n' 'APT::Keep-Downloaded-Packages "false";' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
        > "$ROOTFS/root/etc/apt/apt.conf.d/90vltr-no-cache"
    tar -C "$ROOTFS/root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$ROOTFS/root.tar" .
    local base
    base="$("${BUILDAH[@]}" from scratch)"
    "${BUILDAH[@]}" add --quiet "$base" "$ROOTFS/root.tar" / > /dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$base"
    "${BUILDAH[@]}" commit --quiet --rm "$base" "$BASE" > /dev/null
    rm -rf "$ROOTFS"
}

# buildah's output with the elapsed seconds in front of each line.
timestamped() { while IFS= read -r line; do printf '%5d %s\n' $((SECONDS - BUILD_START)) "$line"; done; }

build_image() {
    BUILD_START=$SECONDS
    if ! "${BUILDAH[@]}" bud --layers --pull=never -f "$CONTEXT/docker/Dockerfile" \
            --ignorefile "$CONTEXT/docker/Dockerfile.dockerignore" --build-arg "BASE_IMAGE=$BASE" \
            "${BUILD_ARGS[@]}" -t "$IMAGE" "$CONTEXT" 2>&1 | timestamped > "$OUT/build.log"; then
        die "the build failed: see $OUT/build.log"
    fi
    # the seconds between one STEP line and the next: each Dockerfile instruction's time
    awk '/^ *[0-9]+ STEP [0-9]+\/[0-9]+:/ { if (name) printf "  %5d s  %s\n", $1 - start, name;
                                            start = $1; name = substr($0, index($0, "STEP"), 70) }
         END { if (name) printf "  %5d s  %s\n", $1 - start, name }' "$OUT/build.log" | tee -a "$SUMMARY"
}

# Checks on the built image before anything runs in it: environment, files, owners, size.
check_image() {
    local env root
    env="$("${BUILDAH[@]}" inspect --type image --format '{{.OCIv1.Config.Env}}' "$IMAGE")"
    if echo "$env" | grep -qE 'PIP_(INDEX_URL|EXTRA_INDEX_URL|FIND_LINKS|CERT)='; then
        echo "FAIL  pip settings in the image's environment: $env" | tee -a "$SUMMARY"; return 1
    fi
    echo "ok    image environment without pip's index or CA settings" | tee -a "$SUMMARY"
    root="$("${BUILDAH[@]}" mount "$CONTAINER")"
    python3 "$HERE/check_image.py" "$root" --host-ca "$HOST_CA" | tee -a "$SUMMARY"
    (cd "$root/opt/vltr" && find . -type f -not -path './vltr_pipeline.egg-info/*' | sed 's|^\./||' | sort) \
        > "$OUT/image-files.txt"
    # one du per listing: du counts a directory once, so nvidia/* after site-packages/* would read 0
    { du -sh "$root"; du -sh "$root"/opt/venv/lib/python3*/site-packages/* "$root"/usr "$root"/var "$root"/opt/vltr \
        | sort -rh | head -n 20; du -sh "$root"/opt/venv/lib/python3*/site-packages/nvidia/* | sort -rh; } \
        2>/dev/null | sed "s|$root/*|/|" > "$OUT/size.txt"
    echo "image size: $("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)" \
         "(unpacked: $(head -n 1 "$OUT/size.txt" | cut -f1); largest parts in size.txt)" | tee -a "$SUMMARY"
    "${BUILDAH[@]}" umount "$CONTAINER" > /dev/null
}

# Run the image's entry script with "$@" as uid 1000, the work directory mounted at /work.
in_image() {
    "${BUILDAH[@]}" run --user 1000:1000 --volume "$OUT/work:/work" "$CONTAINER" -- \
        sh /opt/vltr/docker/entrypoint.sh "$@"
}

selftest() {
    local args="$SELFTEST"
    [ "$args" = all ] && args=""
    # shellcheck disable=SC2086  # pytest arguments as separate words
    if ! in_image selftest $args 2>&1 | tee "$OUT/selftest.log"; then
        die "selftest failed: see $OUT/selftest.log"
    fi
    if grep -q PytestCacheWarning "$OUT/selftest.log"; then die "pytest could not write its cache in the image"; fi
}

demo() {
    if ! in_image run --no-progress 2>&1 | tee "$OUT/demo.log"; then die "the demo failed: see $OUT/demo.log"; fi
    [ -s "$OUT/work/runs/demo/report.md" ] || die "the demo wrote no runs/demo/report.md: see $OUT/demo.log"
    local foreign
    foreign="$(find "$OUT/work" -not -uid 1000 | head -n 5)"
    [ -z "$foreign" ] || die "files in the work directory not owned by uid 1000: $foreign"
    echo "ok    demo finished; $(find "$OUT/work" | wc -l) paths in $OUT/work, all owned by uid 1000" \
        | tee -a "$SUMMARY"
}

cleanup() { if [ -n "$CONTAINER" ]; then "${BUILDAH[@]}" rm "$CONTAINER" > /dev/null 2>&1 || true; fi; }

main() {
    [ "$(id -u)" -eq 0 ] || die "run as root (buildah's storage and chroot isolation need it)"
    command -v buildah > /dev/null || die "buildah is missing: apt-get install buildah debootstrap"
    : > "$SUMMARY"
    echo "image $IMAGE from $CONTEXT, base $BASE, $(date -u +%FT%TZ)" | tee -a "$SUMMARY"
    pip_build_args
    if "${BUILDAH[@]}" inspect --type image "$BASE" > /dev/null 2>&1; then
        echo "base image $BASE exists: debootstrap and import skipped" | tee -a "$SUMMARY"
    else
        [ "$BASE" = localhost/vltr-base:bookworm ] || die "base image $BASE not found: pull it first"
        command -v debootstrap > /dev/null || die "debootstrap is missing: apt-get install debootstrap"
        step "debootstrap (minbase)" debootstrap_base
        step "base import" import_base
    fi
    step "build (all layers)" build_image
    trap cleanup EXIT
    CONTAINER="$("${BUILDAH[@]}" from --pull=never "$IMAGE")"
    # buildah 1.28's run mounts its own copy of a declared VOLUME over a --volume at the same path (the
    # demo's files would never reach the host); docker and podman let the --volume win
    "${BUILDAH[@]}" config --volume /work- "$CONTAINER"
    step "image checks" check_image
    rm -rf "$OUT/work" && install -d -o 1000 -g 1000 "$OUT/work"
    step "selftest" selftest
    if [ "${VLTR_SKIP_DEMO:-}" != 1 ]; then step "demo (run)" demo; fi
    echo "summary: $SUMMARY"
}

# one line, read whole before it runs: an edit of this file during a build cannot run stray text
main "$@"; exit
