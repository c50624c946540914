#!/usr/bin/env bash
# A guided tour: start `moira dev`; open a gate as alice and wait on it, then
# approve it as bob from a second command; then submit a workflow run that
# parks at its gate and finishes after bob approves.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
moira="${CARGO_TARGET_DIR:-$root/target}/debug/moira"
work=$(mktemp -d "${TMPDIR:-/tmp}/moira-demo.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export MOIRA_NATS_URL="nats://127.0.0.1:$port"
dev_pid=""; wait_pid=""

cleanup() {
  [ -n "$wait_pid" ] && kill "$wait_pid" 2>/dev/null || true
  if [ -n "$dev_pid" ]; then
    kill -INT "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# run moira ARGS…: show the command as a user would type it, then run it.
run() { shift; printf '$ moira %s\n' "$*"; "$moira" "$@"; }

# wait_for FILE TEXT SECONDS PID: until FILE holds TEXT; fail if PID exits first.
wait_for() {
  local deadline=$((SECONDS + $3))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    if ! kill -0 "$4" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      grep -q -- "$2" "$1" 2>/dev/null && return 0
      echo "demo: gave up waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
    fi
    sleep 0.1
  done
}

say "1. Start the one-machine stack: a nats-server child and a gate-keeper"
printf '$ moira dev --port %s --web-port 0 --data %s\n' "$port" "$work/dev"
"$moira" dev --port "$port" --web-port 0 --data "$work/dev" >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
wait_for "$work/dev.err" "Press Ctrl-C" 60 "$dev_pid"
sed -n '/moira dev is running/,/HTTP API:/p' "$work/dev.err"
api=$(sed -n 's|^  HTTP API: *\(http[^ ]*\)/gates.*|\1|p' "$work/dev.err")
page=$(sed -n 's|^  web page: *\(http[^ ]*\)/ .*|\1|p' "$work/dev.err")

say "2. alice opens a gate that bob must approve, with a required input, and waits"
printf '$ moira --as alice gate open --message "Deploy v1.0.0 to production?" --approver bob --input WINDOW --required WINDOW --no-self-approval --timeout 10m --wait\n'
"$moira" --as alice gate open --message "Deploy v1.0.0 to production?" --title "release v1.0.0" \
  --approver bob --input WINDOW --required WINDOW --no-self-approval --timeout 10m --wait \
  >"$work/alice.out" 2>"$work/alice.err" &
wait_pid=$!
wait_for "$work/alice.err" "waiting for gate" 30 "$wait_pid"
id=$(head -1 "$work/alice.out")
echo "(alice's terminal) gate id: $id"
cat "$work/alice.err"

say "3. Anyone can see what is waiting"
run moira gate list

say "4. bob forgets the required input: refused, nothing changes"
run moira --as bob gate approve "$id" || echo "(exit $?)"

say "5. bob approves from another command, supplying the required input"
run moira --as bob gate approve "$id" --input WINDOW=sat-02:00 --comment "checks are green"

say "6. alice's wait returns at once with exit code 0 (approved)"
set +e; wait "$wait_pid"; code=$?; set -e; wait_pid=""
cat "$work/alice.out" | tail -n +2
echo "(alice's wait exited with $code)"

say "7. The stored decision"
run moira gate show "$id"

say "8. A workflow run: build, a gate for bob, deploy"
printf '$ moira --as alice run submit examples/deploy.yml --var tag=v1.2.0\n'
run_id=$("$moira" --as alice run submit "$root/examples/deploy.yml" --var tag=v1.2.0)
echo "$run_id"
# Until it parks at its gate (a few milliseconds).
deadline=$((SECONDS + 30))
until "$moira" --json run show "$run_id" | grep -q '"status":"waiting"'; do
  [ $SECONDS -lt $deadline ] || { echo "demo: the run did not reach its gate" >&2; exit 1; }
  sleep 0.2
done
say "9. The run is parked at its gate: no runner is held while bob decides"
run moira run show "$run_id"
gate=$("$moira" --json gate list --run "$run_id" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

say "10. bob approves through the HTTP API; a runner picks the run up again and deploys"
echo "(moira dev serves it with --auth dev: the X-Moira-User header says who decides)"
printf '$ curl -X POST -H "X-Moira-User: bob" -d %s %s\n' "'{\"inputs\":{\"WINDOW\":\"sat-02:00\"}}'" "$api/gates/$gate/approve"
python3 - "$api/gates/$gate/approve" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(
    sys.argv[1],
    data=json.dumps({"inputs": {"WINDOW": "sat-02:00"}}).encode(),
    headers={"X-Moira-User": "bob", "Content-Type": "application/json"},
    method="POST",
)
gate = json.load(urllib.request.urlopen(req))["gate"]
print(f"{gate['status']} by {gate['approved_by']}")
PY
deadline=$((SECONDS + 30))
until "$moira" --json run show "$run_id" | grep -q '"status":"succeeded"'; do
  [ $SECONDS -lt $deadline ] || { echo "demo: the run did not finish" >&2; "$moira" run show "$run_id"; exit 1; }
  sleep 0.2
done
run moira run show "$run_id"
run moira run logs "$run_id"

say "11. One more run waits at its gate: decide it in your browser"
run_id=$("$moira" --as alice run submit "$root/examples/deploy.yml" --var tag=v1.3.0)
deadline=$((SECONDS + 30))
until "$moira" --json run show "$run_id" | grep -q '"status":"waiting"'; do
  [ $SECONDS -lt $deadline ] || { echo "demo: the run did not reach its gate" >&2; exit 1; }
  sleep 0.2
done
echo "Waiting gates (live): $page/"
echo "The run:              $page/runs/$run_id"
echo "Type bob in the yellow banner, open the gate, approve it with a WINDOW, confirm;"
echo "the run page shows deploy running and the run succeeding, without a reload."
if [ -t 0 ] && [ -z "${MOIRA_DEMO_NO_WAIT:-}" ]; then
  echo "(moira dev keeps running; press Enter to stop the demo)"
  done_said=""
  while true; do
    if [ -z "$done_said" ] && "$moira" --json run show "$run_id" | grep -q '"status":"succeeded"'; then
      echo "The run $run_id succeeded after the decision in the browser:"
      "$moira" run show "$run_id"
      done_said=1
    fi
    if read -r -t 1 _; then break; fi
  done
fi

say "Done. Stopping moira dev."
[ "$code" -eq 0 ]
