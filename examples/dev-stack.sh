# Sourced by the example scripts: a one-machine stack (`moira dev`) on a
# free port, stopped (and its folder removed) when the script exits.
#   . "$(dirname "${BASH_SOURCE[0]}")/dev-stack.sh"; start_dev [moira dev flags]
# Sets: moira (the binary), work (a scratch folder), MOIRA_NATS_URL.
moira=${MOIRA:-moira}
work=$(mktemp -d "${TMPDIR:-/tmp}/moira-example.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export MOIRA_NATS_URL="nats://127.0.0.1:$port"
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }

# start_dev [FLAGS...]: starts `moira dev` and waits (at most 60 s) until it is ready.
start_dev() {
  "$moira" dev --port "$port" --web-port 0 --data "$work/dev" "$@" >"$work/dev.out" 2>"$work/dev.err" &
  dev_pid=$!
  local deadline=$((SECONDS + 60))
  until grep -q "Press Ctrl-C" "$work/dev.err" 2>/dev/null; do
    kill -0 "$dev_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || { cat "$work/dev.err" >&2; exit 1; }
    sleep 0.1
  done
}
