#!/usr/bin/env bash
# Runs a command inside a Debian 13 (trixie: glibc 2.41, Python 3.13) root filesystem, for the
# TFX 1.21 stack on a machine whose glibc is older than the 2.39 its ml-metadata and TFDV wheels
# need (Debian 12 has 2.36). The root filesystem is built once from Debian's archive with
# mmdebstrap and kept under the user's cache directory; the repository is bind-mounted at the
# same path inside, so the venv it builds there (.venv-1.21) is the repository's own.
#
#   stacks/debian13.sh make test STACK=1.21     # what `make test STACK=1.21` runs on such a machine
#   stacks/debian13.sh --rebuild true           # build the root filesystem again
#
# Needs root (chroot and mounts), as on the development and CI machines.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tfx-model-pruning
rootfs=${DEBIAN13_ROOTFS:-$cache/debian13-rootfs}
# What the TFX 1.21 stack builds and runs with: TFDV needs pyfarmhash, which compiles (g++).
packages=python3,python3-venv,python3-dev,g++,make,git,ca-certificates

if [ "${1:-}" = "--rebuild" ]; then
    shift
    rm -rf "$rootfs"
fi
[ $# -gt 0 ] || { echo "usage: $0 [--rebuild] COMMAND [ARG...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (chroot and bind mounts)" >&2; exit 1; }

build_rootfs() {
    if ! command -v mmdebstrap >/dev/null; then
        echo "installing mmdebstrap (Debian package) ..." >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
    fi
    local partial="$rootfs.partial"
    rm -rf "$partial"
    mkdir -p "$(dirname "$rootfs")"
    echo "building the Debian 13 root filesystem in $rootfs (about 2 min, 400 MB) ..." >&2
    mmdebstrap --quiet --variant=minbase --include="$packages" trixie "$partial" http://deb.debian.org/debian
    touch "$partial/.tfx-model-pruning-complete"
    mv "$partial" "$rootfs"  # only a finished root filesystem ever has the final name
}

[ -e "$rootfs/.tfx-model-pruning-complete" ] || build_rootfs

# The host's name resolution, certificates and pip settings (its index mirrors, its CA bundle).
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
for pip_conf in /etc/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    if [ -f "$pip_conf" ]; then
        mkdir -p "$rootfs$(dirname "$pip_conf")"
        cp "$pip_conf" "$rootfs$pip_conf"
    fi
done

# Each session mounts in a mount namespace of its own: its mounts vanish with it, and a session
# that ends never unmounts what another one, still running, uses.
if [ -z "${DEBIAN13_PRIVATE_MOUNTS:-}" ]; then
    DEBIAN13_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private "$0" "$@"
fi
mount_into() {  # mount_into SOURCE TARGET [mount options...]
    mkdir -p "$rootfs$2"
    mount "${@:3}" "$1" "$rootfs$2"
}
mount_into proc /proc -t proc
mount_into sysfs /sys -t sysfs
mount_into /dev /dev --rbind
mount_into /tmp /tmp --bind
mkdir -p "$cache/pip"
mount_into "$cache/pip" /root/.cache/pip --bind
mount_into "$repo" "$repo" --bind
# pyenv's Pythons, at the same path (the Makefile's STACK_PYTHON finds 3.11 and 3.12 there): a
# CPython built on an older glibc runs on Debian 13's newer one, against its libssl3 and libffi8.
pyenv_versions=${PYENV_ROOT:-$HOME/.pyenv}/versions
if [ -d "$pyenv_versions" ]; then
    mount_into "$pyenv_versions" "$pyenv_versions" --bind -o ro
fi

# TF_* and CI pass through; the host's PATH does not (its pyenv shims mean nothing inside).
chroot "$rootfs" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
    CI="${CI:-}" TERM="${TERM:-dumb}" /bin/bash -c 'cd "$0" && exec "$@"' "$repo" "$@"
