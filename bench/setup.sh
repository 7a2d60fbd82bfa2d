#!/usr/bin/env bash
# Install what the bench drives, from Debian's packages; does nothing when all is there.
#   nginx + libnginx-mod-http-echo: the internal API (echo_sleep for /slow)
#   wrk: small-request load;  curl: bulk transfers
#   openssh-server + openssh-client: the OpenSSH baseline (sshd, ssh, ssh-keygen)
set -euo pipefail

PACKAGES=(nginx libnginx-mod-http-echo wrk openssh-server openssh-client curl)

missing() {
    local cmd
    for cmd in nginx wrk curl ssh ssh-keygen; do
        command -v "$cmd" >/dev/null 2>&1 || return 0
    done
    [ -x /usr/sbin/sshd ] || return 0
    [ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || return 0
    return 1
}

if ! missing; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bench/setup.sh: need ${PACKAGES[*]} (Debian packages); run as root with apt-get," \
         "or install them yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
# The packages' own services are not wanted: the bench starts private instances.
for service in nginx ssh; do
    if command -v service >/dev/null 2>&1; then
        service "$service" stop >/dev/null 2>&1 || true
    fi
done
