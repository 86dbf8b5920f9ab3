#!/usr/bin/env sh
# Makes sure PostgreSQL's server programs (initdb, pg_ctl) are installed, for the storage
# tests' throwaway server. Looks on PATH, then in Debian's /usr/lib/postgresql/<ver>/bin;
# otherwise installs Debian's postgresql package when run as root, or says what to install.
set -eu

if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    exit 0
fi
for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        exit 0
    fi
done
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
else
    echo "PostgreSQL server not found: install Debian's 'postgresql' package" \
         "(sudo apt-get install postgresql). Without it the PostgreSQL storage tests are" \
         "skipped, and fail when CI=true." >&2
fi
