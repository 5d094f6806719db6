#!/usr/bin/env bash
# Installs the services the suite runs against when missing: PostgreSQL (the multi-worker study
# storage) and Chromium (the report pages, checked in a real browser). Debian packages; needs root.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || missing+=(postgresql)
command -v chromium > /dev/null || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_test_services: ${missing[*]} missing; run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" > /dev/null
