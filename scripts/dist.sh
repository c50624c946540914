#!/usr/bin/env bash
# Builds moira's binaries and packs them with the systemd units, the
# nats-server configs, an environment file example and install.sh:
#   scripts/dist.sh [--debug] [--out DIR]      (just dist)
# writes DIR/moira-<version>-<os>-<arch>.tar.gz (DIR defaults to dist/).
# --debug packs the debug build already there instead (for tests).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=release; out="$root/dist"
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --out) out=$2; shift ;;
    *) echo "usage: scripts/dist.sh [--debug] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
bins=(moira moira-gatekeeper moira-runner moira-notifier moira-web)
target=${CARGO_TARGET_DIR:-$root/target}
if [ "$profile" = release ]; then
  args=(); for b in "${bins[@]}"; do args+=(-p "$([ "$b" = moira ] && echo moira-cli || echo "$b")"); done
  (cd "$root" && cargo build --release "${args[@]}")
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
name="moira-$version-$(uname -s | tr 'A-Z' 'a-z')-$(uname -m)"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/bin" "$stage/$name/systemd" "$stage/$name/nats"
for b in "${bins[@]}"; do
  [ -x "$target/$profile/$b" ] || { echo "dist: $target/$profile/$b is missing (build it first)" >&2; exit 1; }
  install -m 0755 "$target/$profile/$b" "$stage/$name/bin/"
done
install -m 0644 "$root"/deploy/systemd/*.service "$root/deploy/systemd/moira.env.example" "$stage/$name/systemd/"
cp -R "$root"/deploy/nats/. "$stage/$name/nats/"
install -m 0755 "$root/deploy/install.sh" "$stage/$name/install.sh"
install -m 0644 "$root/deploy/README.md" "$stage/$name/README.md"
mkdir -p "$out"
tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"
