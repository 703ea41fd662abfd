#!/bin/sh
# make demo, part 2: a whole snapshot life of a VM with two disks, offline:
# define, snapshots with writes between them, the tree, a middle snapshot
# deleted (dry run first), a revert to a new branch, a rotation.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
q=${QCHAIN_BIN:-$top/bin/qchain}
d=$(mktemp -d "${TMPDIR:-/tmp}/qchain-demo-snap.XXXXXX")
trap 'rm -rf "$d"' EXIT
cd "$d"
export QCHAIN_STATE_DIR="$d/state"
run() { printf '\n$ %s\n' "$*"; "$@"; }
guest_write() { qemu-io -f qcow2 -c "write -P $2 $3 1M" "$("$q" vm show --output=json demo | python3 -c "import json,sys; print([x['active'] for x in json.load(sys.stdin)['disks'] if x['target']=='$1'][0])")" >/dev/null; }

echo
echo "== snapshot manager: a VM with two disks, in $d"
qemu-img create -q -f qcow2 vda.qcow2 64M
qemu-img create -q -f qcow2 vdb.qcow2 32M
run "$q" vm define --disk vda=vda.qcow2 --disk vdb=vdb.qcow2 demo
n=1
for s in monday tuesday wednesday thursday; do
  guest_write vda $((16 + n)) $((n))M
  guest_write vdb $((32 + n)) 4M
  run "$q" snapshot create --description "nightly $s" demo $s
  n=$((n + 1))
done
guest_write vda 0x55 8M
run "$q" snapshot list --tree demo
run "$q" vm show demo
run "$q" snapshot delete --dry-run demo tuesday
run "$q" snapshot delete demo tuesday
run "$q" snapshot revert demo thursday || true
run "$q" snapshot revert --force demo monday
guest_write vda 0x66 2M
run "$q" snapshot create demo monday-fix
run "$q" snapshot list --tree demo
run "$q" snapshot rotate --keep 1 demo
run "$q" snapshot list --tree demo
run "$q" vm show demo
