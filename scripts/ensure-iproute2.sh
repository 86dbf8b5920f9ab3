#!/usr/bin/env sh
# Makes sure iproute2's `ip` and `ss` are installed, for the cluster tests, whose hosts are
# network namespaces (`ip netns`). Installs Debian's iproute2 package when run as root, or
# says what to install.
set -eu

if command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2
else
    echo "iproute2 not found: install Debian's 'iproute2' package (sudo apt-get install" \
         "iproute2). Without it, or without root, the cluster tests run on loopback instead" \
         "of network namespaces, and fail when CI=true." >&2
fi
