#!/usr/bin/env bash
# Delegation with the SSH tools you already have, on a one-machine stack
# (`moira dev`): alice is away, so she signs bob's public key as an OpenSSH
# user certificate with her own registered key. bob's approval, signed with
# that certificate, counts where a gate accepts alice; it is recorded as
# "bob for alice", and plain `ssh-keygen -Y verify` checks it afterwards.
#
#   examples/delegate.sh          (moira and ssh-keygen on PATH, or MOIRA=path/to/moira)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/dev-stack.sh"

say "1. Each person has an SSH key; the registry lists them (alice is an owner)"
for who in alice bob carol; do
  ssh-keygen -q -t ed25519 -N "" -C "$who" -f "$work/$who"
done
cat > "$work/approvers.toml" <<TOML
[users.alice]
roles = ["owner"]
keys = ["$(cat "$work/alice.pub")"]
[users.bob]
keys = ["$(cat "$work/bob.pub")"]
[users.carol]
keys = ["$(cat "$work/carol.pub")"]
TOML
start_dev --approvers "$work/approvers.toml"

say "2. carol asks alice to approve a production change"
gate=$("$moira" --as carol --key "$work/carol" --json gate open --message "Rotate the production database password?" \
  --approver alice --no-self-approval | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$moira" gate show "$gate"

say "3. bob, as himself, may not decide it"
if "$moira" --as bob --key "$work/bob" gate approve "$gate"; then
  echo "delegate: bob approved without a certificate" >&2; exit 1
fi

say "4. alice certifies bob's key to act for her for a week"
ssh-keygen -q -s "$work/alice" -I bob-covers-alice -n moira:alice -V -5m:+7d "$work/bob.pub"
ssh-keygen -L -f "$work/bob-cert.pub" | sed -n '1,12p'

say "5. bob approves with the certificate: it counts for alice"
"$moira" --as bob --key "$work/bob-cert.pub" gate approve "$gate" --comment "covering for alice"
"$moira" gate show "$gate"

say "6. Anyone checks the approval later with plain ssh-keygen"
"$moira" audit export "$gate" --dir "$work/export" --approvers "$work/approvers.toml" | tee "$work/export.txt"
cat "$work/export/allowed_signers"
line=$(grep GateApproved "$work/export.txt")
file=${line%%  (*}
when=${line##*verify-time=}; when=${when%)}
ssh-keygen -Y verify -n moira -f "$work/export/allowed_signers" -I moira:alice \
  -O "verify-time=$when" -s "$file.sig" < "$file"
say "Done: bob approved for alice, and ssh-keygen verified it against alice's key."
