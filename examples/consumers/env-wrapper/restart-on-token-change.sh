#!/bin/sh
# For an application that reads its token only from an environment variable at start:
# run it under this wrapper (as the container's command) with the Secret mounted as a
# volume. The wrapper exports the token, starts the application, and when the kubelet
# delivers a new token it stops the application (SIGTERM, then SIGKILL after a grace
# period) and starts it again with the new token. The container and the pod keep
# running: no rollout, no restart count. POSIX sh (busybox, dash, bash).
#
#   command: ["/bin/sh", "/wrapper/restart-on-token-change.sh", "my-app", "--its-flags"]
#
# ITCARE_TOKEN_DIR   the mounted Secret (default /var/run/itcare)
# ITCARE_TOKEN_KEY   the file exported (default access_token) as ITCARE_TOKEN_ENV
# ITCARE_TOKEN_ENV   the variable the application reads (default ITCARE_TOKEN)
# CHECK_SECONDS      how often the file is compared (default 5)
# GRACE_SECONDS      how long the application may take to stop (default 10)
dir=${ITCARE_TOKEN_DIR:-/var/run/itcare}
key=${ITCARE_TOKEN_KEY:-access_token}
var=${ITCARE_TOKEN_ENV:-ITCARE_TOKEN}
check=${CHECK_SECONDS:-5}
grace=${GRACE_SECONDS:-10}
child=

# A pod may start before its Secret has a token (optional: true on the volume): wait.
until [ -s "$dir/$key" ]; do sleep 1; done

stop_child() {
  [ -n "$child" ] || return 0
  kill -TERM "$child" 2>/dev/null
  waited=0
  while kill -0 "$child" 2>/dev/null && [ "$waited" -lt "$grace" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  kill -KILL "$child" 2>/dev/null
  wait "$child" 2>/dev/null
  child=
}
trap 'stop_child; exit 0' TERM INT

while :; do
  current=$(cat "$dir/$key")
  export "$var=$current"
  "$@" &
  child=$!
  while sleep "$check"; do
    if ! kill -0 "$child" 2>/dev/null; then
      wait "$child"
      exit $?  # the application ended on its own: so does the container
    fi
    [ "$(cat "$dir/$key" 2>/dev/null)" = "$current" ] || break
  done
  echo "restart-on-token-change: new token delivered, restarting the application" >&2
  stop_child
done
