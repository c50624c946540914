#!/usr/bin/env bash
# The release example end to end on a one-machine stack (`moira dev`):
# build an artifact, QA (carol) then the owner (bob) approve its digest,
# and the deploy ships only that digest. A second run has its artifact
# swapped while the gate waits: the approvers approve the digest they were
# shown, and the deploy refuses the swapped file.
#
#   examples/release-digest.sh          (moira on PATH, or MOIRA=path/to/moira)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/dev-stack.sh"
# until_status RUN STATUS: wait (at most 60 s) until the run has STATUS.
until_status() {
  local deadline=$((SECONDS + 60))
  until "$moira" --json run show "$1" | grep -q "\"status\":\"$2\""; do
    [ $SECONDS -lt $deadline ] || { echo "release: run $1 never became $2" >&2; "$moira" run show "$1" >&2; exit 1; }
    sleep 0.2
  done
}
gate_of() { "$moira" --json gate list --run "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])'; }

start_dev

say "1. alice submits the release; it builds and parks at the review"
run=$("$moira" --as alice run submit "$here/release-digest.yml" --var tag=v1.2.0 --var dist="$work/dist")
until_status "$run" waiting
gate=$(gate_of "$run")
"$moira" gate show "$gate"

say "2. bob (the owner) may not approve before QA"
if "$moira" --as bob gate approve "$gate"; then echo "release: bob approved out of order" >&2; exit 1; fi

say "3. carol (QA), then bob, approve the digest they were shown"
"$moira" --as carol gate approve "$gate" --comment "tests pass"
"$moira" --as bob gate approve "$gate" --comment "ship it"
until_status "$run" succeeded
"$moira" run logs "$run" --step deploy
digest=$("$moira" gate outputs "$gate" | sed -n 's/^digests=//p')
artifact="$work/dist/app-v1.2.0.tar.gz"
"$moira" gate check "$gate" --file "$artifact"

say "4. Another release has its artifact swapped while the review waits"
run=$("$moira" --as alice run submit "$here/release-digest.yml" --var tag=v1.3.0 --var dist="$work/dist")
until_status "$run" waiting
gate=$(gate_of "$run")
echo "a different build" | gzip -n > "$work/dist/app-v1.3.0.tar.gz"
"$moira" --as carol gate approve "$gate"
"$moira" --as bob gate approve "$gate"
until_status "$run" failed
"$moira" run logs "$run" --step deploy || true
if "$moira" gate check "$gate" --file "$work/dist/app-v1.3.0.tar.gz"; then
  echo "release: the swapped file passed the check" >&2; exit 1
fi
say "Done: v1.2.0 shipped as approved ($digest); the swapped v1.3.0 was refused."
