#!/usr/bin/env bash
# Builds every image the compose test runs, once:
#   stand-ins for what only a registry has — debian:12-slim (debootstrap),
#   node:20-bookworm-slim (this machine's Node 20), and for the test only
#   postgres (Debian's postgresql-15) and prometheus (Debian's package);
#   then every target of the project's own Dockerfile, as it is.
#   tests/containers/images.sh [--rebuild | --base-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
. tests/containers/lib.sh
rebuild=""
base_only=""
case "${1:-}" in
--rebuild) rebuild=1 ;;
--base-only) base_only=1 ;;
esac

have() { [ -z "$rebuild" ] && podman image exists "$1"; }

if ! podman image exists docker.io/library/debian:12-slim; then
    step "debian:12-slim from debootstrap (Debian's mirror, as apt uses it)"
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
             true)
    rootfs="$MH_CONTAINERS_DIR/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" \
        > "$MH_CONTAINERS_DIR/debootstrap.log" 2>&1
    tar -C "$rootfs" -c . | podman import -q - docker.io/library/debian:12-slim > /dev/null
    rm -rf "$rootfs"
fi
[ -n "$base_only" ] && exit 0

if ! have docker.io/library/node:20-bookworm-slim; then
    step "node:20-bookworm-slim from this machine's Node.js $(node --version)"
    ctx="$MH_CONTAINERS_DIR/node-context"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$(readlink -f "$(command -v node)")" "$ctx/node"
    cp -r "$(dirname "$(readlink -f "$(command -v npm)")")/.." "$ctx/npm"
    podman build -q --network host -f tests/containers/node.Containerfile -t docker.io/library/node:20-bookworm-slim \
        "$ctx" > /dev/null
    rm -rf "$ctx"
fi

for t in postgres prometheus; do
    if ! have "localhost/motehub-test/$t:latest"; then
        step "motehub-test/$t (test stand-in from Debian's package)"
        podman build -q --network host -f "tests/containers/$t.Containerfile" -t "motehub-test/$t" tests/containers \
            > /dev/null
    fi
done

# Builds use the host's network: the RUN steps reach Debian's mirror and
# npm's registry as the host does (netavark's bridges here get no route to
# this machine's resolver). npm inside the build trusts this machine's CA
# list, mounted for the build only, never copied into an image.
npmrc="$MH_CONTAINERS_DIR/npmrc"
echo "cafile=/run/host-ca.crt" > "$npmrc"
for target in motehub broker; do
    step "motehub/$target:dev from the Dockerfile (target $target)"
    podman build --network host --target "$target" -t "motehub/$target:dev" \
        -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro \
        -v "$npmrc":/usr/local/etc/npmrc:ro \
        -f Dockerfile "$root" > "$MH_CONTAINERS_DIR/build-$target.log" 2>&1 ||
        { tail -30 "$MH_CONTAINERS_DIR/build-$target.log"; exit 1; }
done
step "images ready"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'motehub|debian|node' | sort
