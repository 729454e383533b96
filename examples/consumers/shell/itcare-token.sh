#!/bin/sh
# Read the ITCare token from the mounted Secret on every call: $(cat FILE) in the header.
# POSIX sh (busybox, dash, bash).
dir=${ITCARE_TOKEN_DIR:-/var/run/itcare}

# Usage: curl -H "Authorization: $(authorization)" https://itcare.cegedim.cloud/itcare/...
authorization() { cat "$dir/authorization"; }

# Demo: once a second, print which token is in use (a fingerprint, never the token).
n=${1:-1000000000}
while [ "$n" -gt 0 ]; do
  printf %s "$(authorization)" | sha256sum | cut -d' ' -f1
  n=$((n - 1))
  sleep 1
done
