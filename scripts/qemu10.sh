#!/bin/sh
# Fetches QEMU 10.0 from Debian's bookworm-backports suite and unpacks it
# (dpkg -x, no install) beside the system's QEMU, then writes wrappers so
# that putting $QCHAIN_CACHE/qemu-10.0/bin first in PATH runs 10.0's
# qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon and qemu-system-x86_64
# with their own firmware (-L) and block modules (QEMU_MODULE_DIR).
# Prints that bin folder. Idempotent: does nothing when it is complete.
set -eu
cache=${QCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qchain}
dir=$cache/qemu-10.0
bin=$dir/bin
if [ -f "$dir/.complete" ]; then echo "$bin"; exit 0; fi
command -v apt-get >/dev/null 2>&1 || { echo "qemu10: no apt-get; put QEMU 10.0 in $bin by hand" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "qemu10: run as root once (apt-get of bookworm-backports)" >&2; exit 1; }
src=/etc/apt/sources.list.d/qchain-bookworm-backports.sources
if [ ! -f "$src" ]; then
  cat > "$src" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
echo "qemu10: fetching QEMU 10.0 from bookworm-backports into $dir" >&2
apt-get update -qq -o Dir::Etc::sourcelist="$src" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >&2
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/debs" "$dir.tmp/root" "$dir.tmp/bin"
chmod 777 "$dir.tmp/debs" # apt-get download runs as _apt where it can
(cd "$dir.tmp/debs" && apt-get download -qq \
  qemu-utils/bookworm-backports qemu-system-x86/bookworm-backports \
  qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports \
  qemu-block-extra/bookworm-backports 2>&1 | grep -v 'unsandboxed' >&2 || true)
n=0
for f in "$dir.tmp"/debs/*.deb; do dpkg -x "$f" "$dir.tmp/root"; n=$((n + 1)); done
[ "$n" -eq 5 ] || { echo "qemu10: expected 5 packages, got $n" >&2; exit 1; }
root=$dir/root
for t in qemu-img qemu-io qemu-nbd qemu-storage-daemon qemu-system-x86_64; do
  extra=""
  [ "$t" = qemu-system-x86_64 ] && extra="-L $root/usr/share/qemu"
  cat > "$dir.tmp/bin/$t" <<W
#!/bin/sh
# QEMU 10.0 from bookworm-backports, unpacked by qchain's scripts/qemu10.sh.
QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu
export QEMU_MODULE_DIR
exec $root/usr/bin/$t $extra "\$@"
W
  chmod 755 "$dir.tmp/bin/$t"
done
rm -rf "$dir.tmp/debs"
rm -rf "$dir" && mv "$dir.tmp" "$dir"
"$bin/qemu-img" --version | grep -q 'version 10\.0' || { echo "qemu10: $bin/qemu-img is not 10.0" >&2; exit 1; }
touch "$dir/.complete"
echo "$bin"
