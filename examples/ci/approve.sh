#!/usr/bin/env bash
# A pipeline's approval step: opens a gate named after the pipeline and
# waits for the decision. The exit code is moira's (0 approved, 3 denied,
# 4 timed out, 5 cancelled, 1 an error), so the job passes only when the
# gate is approved; the decision becomes the job's outputs.
#
#   approve.sh "Deploy $VERSION to production?" [moira gate open flags...]
#
# Needs MOIRA_NATS_URL (and credentials, e.g. MOIRA_NATS_NKEY, MOIRA_TLS_CA)
# and moira on PATH. Writes outputs to $GITHUB_OUTPUT (GitHub Actions) or
# to the dotenv file $MOIRA_DOTENV (GitLab CI: artifacts:reports:dotenv).
set -uo pipefail
message=${1:?usage: approve.sh MESSAGE [moira gate open flags...]}
shift
# One gate per pipeline run and attempt: a retried job finds its gate.
key=${MOIRA_GATE_KEY:-${GITHUB_REPOSITORY:-${CI_PROJECT_PATH:-local}}/${GITHUB_RUN_ID:-${CI_PIPELINE_ID:-0}}/${GITHUB_RUN_ATTEMPT:-${CI_JOB_ID:-1}}/approve}
id=$(moira gate open --gate-key "$key" --message "$message" "$@") || exit 1
echo "moira: waiting for gate $id" >&2
moira gate wait "$id"
code=$?
out=${GITHUB_OUTPUT:-${MOIRA_DOTENV:-/dev/null}}
{ echo "gate_id=$id"; moira gate outputs "$id"; } >> "$out"
exit $code
