#!/bin/sh
# make demo: builds a small chain in a temporary folder and inspects it
# with qchain, next to what qemu-img says about the same files.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
q=${QCHAIN_BIN:-$top/bin/qchain}
d=$(mktemp -d "${TMPDIR:-/tmp}/qchain-demo.XXXXXX")
trap 'rm -rf "$d"' EXIT
cd "$d"
run() { printf '\n$ %s\n' "$*"; "$@"; }

echo "== building a 3-layer chain in $d"
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -c "write -P 0x11 0 1M" -c "write -P 0x12 8M 512k" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 snap1.qcow2
qemu-io -c "write -P 0x21 512k 1M" -c "write -z 8M 64k" snap1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b snap1.qcow2 -F qcow2 active.qcow2
qemu-io -c "write -P 0x31 4M 256k" -c "write -P 0x32 16M 64k" active.qcow2 >/dev/null

run "$q" info --backing-chain active.qcow2
run "$q" map active.qcow2
run "$q" map --output=json active.qcow2
run "$q" check active.qcow2

# qchain prints qemu-img 10.0's layout; a 7.x qemu-img (Debian 12's) is
# compared with qchain's 7.2 layout.
compat=
qv=$(qemu-img --version | sed -n '1s/^qemu-img version \([0-9]*\)\..*/\1/p')
if [ "$qv" = 7 ]; then compat=--compat=7.2; fi
echo
echo "== the same answers as qemu-img $qv.x (JSON compared after parsing${compat:+, qchain $compat}):"
for cmd in "info --backing-chain" "map" "check"; do
  # shellcheck disable=SC2086
  "$q" $cmd $compat --output=json active.qcow2 > ours.json || true
  # shellcheck disable=SC2086
  qemu-img $cmd --output=json active.qcow2 > theirs.json || true
  if python3 -c 'import json,sys; sys.exit(json.load(open("ours.json")) != json.load(open("theirs.json")))' 2>/dev/null; then
    echo "  $cmd: identical"
  else
    echo "  $cmd: DIFFERENT"; diff ours.json theirs.json || true
  fi
done
"$q" export -o ours.raw active.qcow2
qemu-img convert -O raw active.qcow2 theirs.raw
cmp -s ours.raw theirs.raw && echo "  export: byte-identical to qemu-img convert -O raw"
run "$q" compare active.qcow2 theirs.raw

echo
echo "== live block jobs: a running qemu (no guest) has the chain open"
qemu-system-x86_64 -machine none -nodefaults -display none \
  -drive "if=none,id=vda,file=$d/active.qcow2,format=qcow2" \
  -qmp "unix:$d/qmp.sock,server=on,wait=off" -daemonize -pidfile "$d/qemu.pid"
# qemu removes its pid file when it exits.
trap 'if [ -f "$d/qemu.pid" ]; then kill "$(cat "$d/qemu.pid")" 2>/dev/null || true; fi; rm -rf "$d"' EXIT
run "$q" disks --qmp qmp.sock
run "$q" blockpull --qmp qmp.sock --base base.qcow2 --bandwidth 2 --wait --verbose vda
run "$q" blockcommit --qmp qmp.sock --active --pivot --bandwidth 2 --wait --verbose vda
run "$q" disks --qmp qmp.sock
# Quit qemu (SIGTERM: a clean shutdown that flushes the images).
pid=$(cat qemu.pid)
kill "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
echo
echo "== after the pull and the active commit, base.qcow2 alone holds the guest view:"
run qemu-img info --backing-chain base.qcow2
run "$q" compare base.qcow2 theirs.raw
