#!/usr/bin/env bash
# Installs an unpacked moira release as its systemd units expect, from the
# folder this script is in:
#   binaries  -> /usr/local/bin
#   units     -> /etc/systemd/system
#   settings  -> /etc/moira/<service>.env (from moira.env.example; never
#                overwritten), mode 0600
#   user      -> moira (system user, no shell, no home)
# Run as root. DESTDIR=DIR installs under DIR instead, without creating the
# user or touching systemd (for packaging and tests).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${DESTDIR:-}
if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or set DESTDIR to install into a folder)" >&2; exit 1
fi
install -d -m 0755 "$dest/usr/local/bin" "$dest/etc/systemd/system"
install -d -m 0750 "$dest/etc/moira"
for b in "$here"/bin/*; do install -m 0755 "$b" "$dest/usr/local/bin/"; done
for u in "$here"/systemd/*.service; do install -m 0644 "$u" "$dest/etc/systemd/system/"; done
for s in gatekeeper runner notifier web; do
  env="$dest/etc/moira/$s.env"
  [ -e "$env" ] || install -m 0600 "$here/systemd/moira.env.example" "$env"
done
if [ -z "$dest" ]; then
  id moira >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin moira
  systemctl daemon-reload
  echo "installed; edit /etc/moira/*.env, then: systemctl enable --now moira-gatekeeper moira-runner moira-notifier moira-web"
else
  echo "installed under $dest"
fi
