#!/usr/bin/env bash
# The sub-workflow example end to end on a one-machine stack (`moira dev`):
# release.yml builds, calls sign-off.yml as a child run (its own smoke
# step and gate), and deploys with what the child gave back. A second
# release is denied inside the child, and its deploy never runs.
#
#   examples/subflow/run.sh          (moira on PATH, or MOIRA=path/to/moira)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../dev-stack.sh"
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# until_true EXPR CMD...: wait (at most 60 s) until EXPR holds over CMD's JSON output (d).
until_true() {
  local expr=$1; shift
  local deadline=$((SECONDS + 60))
  until "$@" 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "subflow: gave up waiting for $expr" >&2; exit 1; }
    sleep 0.2
  done
}
child_of() { "$moira" --json run show "$1" | field '[s["child"] for s in d["steps"] if s["name"]=="staging"][0]'; }
gate_of() { "$moira" --json run show "$1" | field '[s["gate_id"] for s in d["steps"] if s["name"]=="approve"][0]'; }

start_dev

say "1. alice submits the release; moira run submit sends sign-off.yml with it"
run=$("$moira" --as alice run submit "$here/release.yml" --var tag=v1.2.0)
until_true 'any(s.get("child") for s in d["steps"])' "$moira" --json run show "$run"
child=$(child_of "$run")
until_true 'any(s["status"]=="waiting" and s["name"]=="approve" for s in d["steps"])' "$moira" --json run show "$child"
"$moira" run show "$run"
"$moira" gate list

say "2. bob signs off inside the child; the parent deploys with his name"
"$moira" --as bob gate approve "$(gate_of "$child")"
until_true 'd["status"]=="succeeded"' "$moira" --json run show "$run"
"$moira" run show "$run"
"$moira" run logs "$run" --step staging
"$moira" run logs "$run" --step deploy

say "3. A second release is denied inside the child: the call step fails, deploy never runs"
run=$("$moira" --as alice run submit "$here/release.yml" --var tag=v1.3.0)
until_true 'any(s.get("child") for s in d["steps"])' "$moira" --json run show "$run"
child=$(child_of "$run")
until_true 'any(s["status"]=="waiting" and s["name"]=="approve" for s in d["steps"])' "$moira" --json run show "$child"
"$moira" --as bob gate deny "$(gate_of "$child")" --reason "staging is red"
until_true 'd["status"]=="rejected"' "$moira" --json run show "$run"
"$moira" run show "$run"
say "Done: v1.2.0 shipped after the child's sign-off; v1.3.0 was stopped inside the child."
