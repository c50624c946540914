#!/usr/bin/env bash
# An AI agent's tool call that runs only if a person approved exactly that
# call. The agent writes the call as JSON, asks for approval with
# `moira gate open --action-file`, and before running it checks with
# `moira gate check --action-file` that the approved call is byte for byte
# (as canonical JSON) the one it is about to run.
#
#   tool-call.sh ask CALL.json       # prints the gate id; a person approves it
#   tool-call.sh run GATE CALL.json  # runs the call only if GATE covers it
#
# Needs MOIRA_NATS_URL (and credentials) and moira on PATH. The "tool" here
# is a stand-in that prints what it would do.
set -euo pipefail
case "${1:-}" in
  ask)
    call=${2:?usage: tool-call.sh ask CALL.json}
    tool=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tool"])' "$call")
    moira gate open --message "The agent wants to run $tool" --action-file "$call" \
      --valid-for 15m ${MOIRA_AGENT_APPROVER:+--approver "$MOIRA_AGENT_APPROVER"}
    ;;
  run)
    gate=${2:?usage: tool-call.sh run GATE CALL.json}
    call=${3:?usage: tool-call.sh run GATE CALL.json}
    if ! moira gate check "$gate" --action-file "$call"; then
      echo "agent: not running the call: it is not the one that was approved" >&2
      exit 6
    fi
    python3 - "$call" <<'PY'
import json, sys
call = json.load(open(sys.argv[1]))
print(f"agent: running {call['tool']} with {json.dumps(call.get('arguments'), sort_keys=True)}")
PY
    ;;
  *)
    echo "usage: tool-call.sh ask CALL.json | run GATE CALL.json" >&2
    exit 2
    ;;
esac
