#!/bin/sh
# Build flowtape's node image with podman, from Debian packages only (no registry pull):
#   1. a Debian 12 root file system by mmdebstrap, imported as localhost/flowtape-base:bookworm
#      (once; kept in podman's storage);
#   2. deploy/Containerfile on it -> localhost/flowtape:VERSION (and :latest).
# Usage: deploy/build-image.sh [TAG]   (run from the checkout; root or rootless podman)
# Env: MIRROR (default http://deb.debian.org/debian), PODMAN_RUNTIME (default runc: crun refuses
# hybrid cgroup hierarchies), CONTAINERS_CONF (default: a file with default_ulimits = [], as
# some hosts refuse podman's default ulimits).
set -eu
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
tag="${1:-localhost/flowtape:$version}"
base=localhost/flowtape-base:bookworm
runtime="${PODMAN_RUNTIME:-runc}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${CONTAINERS_CONF:-}" ]; then
    printf '[containers]\ndefault_ulimits = []\n' > "$work/containers.conf"
    export CONTAINERS_CONF="$work/containers.conf"
fi
say() { echo "build-image: $*" >&2; }
t0=$(date +%s)
if ! podman image exists "$base"; then
    say "making $base with mmdebstrap (Debian 12, variant apt)"
    mmdebstrap --quiet --variant=apt bookworm "$work/rootfs.tar" "${MIRROR:-http://deb.debian.org/debian}"
    podman import --quiet "$work/rootfs.tar" "$base" >/dev/null
    rm -f "$work/rootfs.tar"
fi
t1=$(date +%s)
# Dependencies as wheels, fetched by the host's pip (its index, proxy and certificates apply),
# plus the build backend: the image build itself installs with --no-index.
py="${PYTHON:-python3}"
rm -rf build/wheels && mkdir -p build/wheels
say "downloading wheels with $py -m pip"
"$py" -m pip download --quiet --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 --platform any \
    --implementation cp -d build/wheels . "setuptools>=77,<90" wheel >/dev/null 2>"$work/pip.err" || { cat "$work/pip.err" >&2; exit 1; }
rm -f build/wheels/flowtape-*  # built from source in the image
t2=$(date +%s)
say "building $tag from deploy/Containerfile"
podman --runtime "$runtime" build --quiet --network host --layers -f deploy/Containerfile -t "$tag" -t localhost/flowtape:latest . >/dev/null
t3=$(date +%s)
size=$(podman image inspect --format '{{.Size}}' "$tag")
say "built $tag: $size bytes ($((size / 1048576)) MiB); base $((t1 - t0)) s, wheels $((t2 - t1)) s, image $((t3 - t2)) s"
echo "$tag"
