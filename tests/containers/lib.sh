# Shared by tests/containers/*.sh: podman as this machine runs it
# (../shared/PLATFORM-NOTES.md): runc, limits no higher than the current
# ones, and netavark with aardvark-dns (Debian's podman defaults to CNI
# without a DNS plugin, where compose services cannot find each other by
# name), through a containers.conf of our own.
MH_CONTAINERS_DIR=${MH_CONTAINERS_DIR:-/tmp/motehub-containers}
mkdir -p "$MH_CONTAINERS_DIR"
export CONTAINERS_CONF="$MH_CONTAINERS_DIR/containers.conf"
nofile=$(ulimit -n)
nproc=$(ulimit -u)
[ "$nproc" = unlimited ] && nproc=4096
[ "$nproc" -gt 4096 ] && nproc=4096
cat > "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
CONF
# seconds since the script started, for the step lines
SECONDS=0
step() { printf '== [%3ds] %s\n' "$SECONDS" "$*"; }
