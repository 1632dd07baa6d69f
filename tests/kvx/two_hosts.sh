#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# KV transfer between two network namespaces joined by a veth pair: the nearest this machine
# has to two hosts. baton-kvbench runs in one namespace and its sender (baton-kvx-peer) in the
# other, over TCP with every byte through the transport. kvx's TCP data connection must come up
# on the peer's advertised address (loopback, tried first since both share a kernel, has nobody
# listening there), and every transfer must arrive byte for byte (kvbench checks each size);
# then the same through UCX's TCP transport. Needs root and iproute2: skipped (77) otherwise.
set -u
bin=${BATON_BINARY_DIR:-build}/bin
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    echo "skipped: needs root and iproute2"
    exit 77
fi
a=bkvxa$$ b=bkvxb$$ tmp=$(mktemp -d)
cleanup() {
    ip netns del "$a" 2>/dev/null
    ip netns del "$b" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
if ! ip netns add "$a" 2>/dev/null || ! ip netns add "$b" 2>/dev/null ||
    ! ip link add "va$$" type veth peer name "vb$$" 2>/dev/null; then
    echo "skipped: cannot make network namespaces here"
    exit 77
fi
set -e
ip link set "va$$" netns "$a"
ip link set "vb$$" netns "$b"
ip -n "$a" addr add 10.231.0.1/24 dev "va$$"
ip -n "$b" addr add 10.231.0.2/24 dev "vb$$"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "va$$" up
ip -n "$b" link set "vb$$" up

# kvbench starts the baton-kvx-peer next to itself: make that one enter the other namespace.
cp "$bin/baton-kvbench" "$tmp/"
printf '#!/bin/sh\nexec ip netns exec %s "%s" "$@"\n' "$b" "$(realpath "$bin/baton-kvx-peer")" \
    >"$tmp/baton-kvx-peer"
chmod +x "$tmp/baton-kvx-peer"

run() {
    ip netns exec "$a" "$tmp/baton-kvbench" --transport tcp --sizes 64K,1M,8M --iters 16 "$@"
}
out=$(run)
echo "$out"
# Every measurement (3 sizes x whole and layer-wise) on kvx's own connection.
[ "$(echo "$out" | grep -c ' stream$')" = 6 ] || { echo "FAIL: data did not go over the stream"; exit 1; }
out=$(run --stream off)
echo "$out"
[ "$(echo "$out" | grep -c ' ucx$')" = 6 ] || { echo "FAIL: data did not go through UCX"; exit 1; }
echo "ok"
