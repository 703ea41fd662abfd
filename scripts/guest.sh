#!/bin/sh
# Builds the real Linux guest of qchain's tests (fixtures/guest) from Debian
# packages only: linux-image-amd64's kernel, busybox-static and
# qemu-guest-agent, fetched with `apt-get download` (checked against the
# signed archive; nothing is installed) and unpacked with `dpkg -x`.
# The result is $QCHAIN_CACHE/guest-<kernel version>/ holding vmlinuz and
# initrd.img (a gzip'd newc cpio: busybox, the virtio and ext4 modules, the
# agent with its libraries, and fixtures/guest/initramfs/init as /init).
# It also holds vmlinux, the kernel decompressed from vmlinuz (an ELF with a
# PVH entry that QEMU loads directly, skipping the slow decompression under
# TCG), when xz can extract it.
# Prints that folder. Idempotent: a complete folder built from this script
# and this init is reused as it is; any other one is rebuilt. Exits 2 when
# the packages cannot be had here (no apt-get, nothing to download), so
# tests can skip, and 1 on any other failure.
#
# qemu-ga's libraries are the host's own where they are the same Debian
# builds the archive would give (the package owning the file is installed
# at the archive's candidate version); the others come from their packages,
# downloaded and unpacked too. QCHAIN_GUEST_LIBS=download takes them all
# from the archive (the agent's dependency closure), as on a host that
# lacks them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
init=$here/../fixtures/guest/initramfs/init
cache=${QCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qchain}
[ -f "$init" ] || { echo "guest: $init is missing" >&2; exit 1; }
stamp=$(cat "$0" "$init" | sha256sum | cut -c1-16)
unavailable() { echo "guest: $*" >&2; exit 2; }

# reuse prints the newest complete folder built by this script and init.
reuse() {
  # shellcheck disable=SC2012 # our own folder names; newest kernel first
  for d in $(ls -d "$cache"/guest-*/ 2>/dev/null | sort -rV); do
    d=${d%/}
    if [ "$(cat "$d/.complete" 2>/dev/null)" = "$stamp" ] && [ -f "$d/vmlinuz" ] && [ -f "$d/initrd.img" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}
reuse && exit 0

for t in apt-get apt-cache dpkg dpkg-deb dpkg-query gzip ldd sha256sum; do
  command -v "$t" >/dev/null 2>&1 ||
    unavailable "$t is missing: the guest is built from Debian packages with apt-get download and dpkg -x (Debian or Ubuntu hosts); or set QCHAIN_GUEST_DIR to a folder with vmlinuz and initrd.img"
done
mkdir -p "$cache"
# One builder at a time; a second one waits, then finds the folder done.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.guest.lock"
  flock 9
  reuse && exit 0
fi

# linux-image-amd64 is a metapackage: its candidate depends on the
# versioned package that holds the kernel.
kpkg() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | grep -v unsigned | head -n 1
}
pkg=$(kpkg)
if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
  echo "guest: linux-image-amd64 unknown to apt; running apt-get update" >&2
  apt-get update -qq >&2 || true
  pkg=$(kpkg)
fi
[ -n "$pkg" ] || unavailable "apt knows no linux-image-amd64 (run apt-get update?)"
kver=${pkg#linux-image-}
dir=$cache/guest-$kver
tmp=$dir.tmp.$$
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp/debs" "$tmp/root" "$tmp/initrd"
chmod 777 "$tmp/debs" # apt-get download runs as _apt where it can

# download fetches packages into $tmp/debs and checks each one arrived.
download() {
  echo "guest: apt-get download $*" >&2
  (cd "$tmp/debs" && apt-get download -qq "$@" 2>&1 | grep -v unsandboxed >&2) || true
  for p in "$@"; do
    found=""
    for f in "$tmp"/debs/"${p}"_*.deb; do
      [ -f "$f" ] && [ "$(dpkg-deb -f "$f" Package)" = "$p" ] && found=$f
    done
    [ -n "$found" ] || unavailable "apt-get download $p failed"
    dpkg -x "$found" "$tmp/root"
  done
}
download "$pkg" busybox-static qemu-guest-agent

r=$tmp/root
i=$tmp/initrd
[ -f "$r/boot/vmlinuz-$kver" ] || { echo "guest: $pkg has no /boot/vmlinuz-$kver" >&2; exit 1; }
cp "$r/boot/vmlinuz-$kver" "$tmp/vmlinuz"
# extract-vmlinux's way: the xz stream starts at its magic inside the
# bzImage. Optional: without it the guest boots from vmlinuz.
xzcat=""
if command -v xz >/dev/null 2>&1; then xzcat="xz -dc --single-stream"; else xzcat="$r/bin/busybox unxz -c"; fi
off=$(LC_ALL=C grep -abo "$(printf '\3757zXZ')" "$tmp/vmlinuz" 2>/dev/null | head -n 1 | cut -d: -f1)
if [ -n "$off" ]; then
  tail -c +$((off + 1)) "$tmp/vmlinuz" | $xzcat >"$tmp/vmlinux" 2>/dev/null || true
  [ "$(head -c 4 "$tmp/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] || rm -f "$tmp/vmlinux"
fi

mkdir -p "$i/bin" "$i/sbin" "$i/usr/sbin" "$i/proc" "$i/sys" "$i/dev" "$i/run" "$i/tmp" \
  "$i/etc/qchain" "$i/lib/modules"
cp "$r/bin/busybox" "$i/bin/busybox"
# The applets' links, made here rather than by the guest at every boot.
for a in $("$r/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -s busybox "$i/bin/$a"
done
cp "$init" "$i/init"
chmod 755 "$i/init"

# Modules in load order: each one after what its depends= field names
# (modules.dep is made at install time, so it is not in the package),
# and none that the kernel has built in.
mods=$r/lib/modules/$kver
order=""
modfile() { find "$mods/kernel" -name "$1.ko" | head -n 1; }
add() {
  case " $order " in *" $1 "*) return 0 ;; esac
  if grep -q "/$1\.ko$" "$mods/modules.builtin" 2>/dev/null; then return 0; fi
  [ -n "$(modfile "$1")" ] || { echo "guest: module $1 is not in $pkg" >&2; exit 1; }
  for d in $(tr '\0' '\n' <"$(modfile "$1")" | sed -n 's/^depends=//p' | tr ',' ' '); do
    add "$d"
  done
  cp "$(modfile "$1")" "$i/lib/modules/$1.ko"
  order="$order $1"
}
# virtio-blk for the disks, virtio_console for the agent's port, ext4 (with
# the crc32c its checksums ask the crypto API for) for the second disk.
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
  virtio_console crc16 mbcache jbd2 crc32c_generic ext4; do
  add "$m"
done
echo "$order" | tr ' ' '\n' | sed '/^$/d' >"$i/etc/qchain/modules"

# qemu-ga and the libraries ldd names for it, at the paths the loader asks
# for; each one from the host when it is the archive's own build, else from
# its package.
ga=$r/usr/sbin/qemu-ga
cp "$ga" "$i/usr/sbin/qemu-ga"
# owner prints the installed package that holds file $1, under any of the
# names usrmerge gives it.
owner() {
  real=$(readlink -f "$1")
  for n in "$1" "$real" "${real#/usr}" "/usr$1"; do
    o=$(dpkg -S "$n" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$o" ] && { echo "$o"; return 0; }
  done
  return 1
}
# inroot prints the file that path $1 names inside the unpacked packages,
# following links there (absolute ones too, such as libc6's
# /lib64/ld-linux-x86-64.so.2) and trying both sides of usrmerge.
inroot() {
  p=$1 n=0
  while [ $n -lt 16 ]; do
    if [ ! -e "$r$p" ] && [ ! -L "$r$p" ]; then
      case "$p" in /usr/*) p=${p#/usr} ;; *) p=/usr$p ;; esac
      [ -e "$r$p" ] || [ -L "$r$p" ] || return 1
    fi
    [ -L "$r$p" ] || { echo "$r$p"; return 0; }
    t=$(readlink "$r$p")
    case "$t" in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
    n=$((n + 1))
  done
  return 1
}
needed() { awk '/=>/ { print $3 } !/=>/ && $1 ~ /^\// { print $1 }' "$1"; }
# host_plan prints "PATH host" or "PATH PACKAGE" for each library.
host_plan() {
  ldd "$ga" >"$tmp/ldd" 2>&1 || return 1
  ! grep -q 'not found' "$tmp/ldd" || return 1
  for f in $(needed "$tmp/ldd"); do
    o=$(owner "$f") || return 1
    have=$(dpkg-query -W -f '${Version}' "$o" 2>/dev/null) || return 1
    want=$(apt-cache policy "$o" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    if [ -n "$have" ] && [ "$have" = "$want" ]; then echo "$f host"; else echo "$f $o"; fi
  done
}
if [ "${QCHAIN_GUEST_LIBS:-}" != download ] && host_plan >"$tmp/libs"; then
  fetch=$(awk '$2 != "host" { print $2 }' "$tmp/libs" | sort -u)
  if [ -n "$fetch" ]; then
    echo "guest: qemu-ga's libraries from the host, except newer builds in the archive: $(echo "$fetch" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086
    download $fetch
  fi
else
  # The agent's dependency closure, libraries only, resolved inside it.
  deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances qemu-guest-agent |
    grep -E '^(lib|zlib)' | grep -v perl | sort -u)
  # shellcheck disable=SC2086
  download $deps
  LD_LIBRARY_PATH=$r/lib/x86_64-linux-gnu:$r/usr/lib/x86_64-linux-gnu ldd "$ga" >"$tmp/ldd" 2>&1 ||
    { cat "$tmp/ldd" >&2; exit 1; }
  if grep 'not found' "$tmp/ldd" >&2; then echo "guest: qemu-ga needs libraries its packages lack" >&2; exit 1; fi
  for f in $(needed "$tmp/ldd"); do echo "${f#"$r"} archive"; done >"$tmp/libs"
fi
while read -r f from; do
  src=$f
  if [ "$from" != host ]; then
    src=$(inroot "$f") || { echo "guest: $f is not in the downloaded packages" >&2; exit 1; }
  fi
  case "$f" in /usr/lib/*) f=${f#/usr} ;; esac
  mkdir -p "$i$(dirname "$f")"
  cp -L "$src" "$i$f"
done <"$tmp/libs"

# The archive: newc, owned by root, gzip'd (the kernel has CONFIG_RD_GZIP).
cpio=$(command -v cpio || true)
[ -n "$cpio" ] || cpio="$r/bin/busybox cpio"
(cd "$i" && find . | LC_ALL=C sort | $cpio -o -H newc -R 0:0 2>/dev/null) | gzip -9 >"$tmp/initrd.img"
[ -s "$tmp/initrd.img" ] || { echo "guest: building initrd.img failed" >&2; exit 1; }

mkdir -p "$tmp/out"
mv "$tmp/vmlinuz" "$tmp/initrd.img" "$tmp/out/"
[ ! -f "$tmp/vmlinux" ] || mv "$tmp/vmlinux" "$tmp/out/"
cp "$i/etc/qchain/modules" "$tmp/out/modules"
echo "$kver" >"$tmp/out/kernel-version"
echo "$stamp" >"$tmp/out/.complete"
rm -rf "$dir" && mv "$tmp/out" "$dir"
echo "$dir"
