#!/usr/bin/env sh
# Makes sure Debian's headless-capable Chromium is installed at /usr/bin/chromium, for the
# dashboard's real-browser test (driven by Playwright's Python package; no browser is ever
# downloaded). Installs Debian's chromium package when run as root, or says what to install.
set -eu

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
else
    echo "Chromium not found at /usr/bin/chromium: install Debian's 'chromium' package" \
         "(sudo apt-get install --no-install-recommends chromium). Without it the" \
         "dashboard's browser test is skipped, and fails when CI=true." >&2
fi
