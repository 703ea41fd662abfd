#!/bin/sh
# Installs the qemu tools qchain is tested against, when missing (Debian):
# the system's QEMU (7.2 on Debian 12) from its packages, QEMU 10.0
# unpacked beside it (scripts/qemu10.sh), and the tests' Linux guest
# (scripts/guest.sh), both cached.
set -e
cd "$(dirname "$0")/.."
need=""
command -v qemu-img >/dev/null 2>&1 || need="$need qemu-utils"
command -v qemu-io >/dev/null 2>&1 || need="$need qemu-utils"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v qemu-storage-daemon >/dev/null 2>&1 || need="$need qemu-system-common"
if [ -n "$need" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: missing$need and no apt-get; install them by hand" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "deps: installing$need" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
scripts/qemu10.sh >/dev/null
# The real Linux guest of the tests (kernel + busybox initramfs).
scripts/guest.sh >/dev/null
