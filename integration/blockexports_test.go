package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/qmp"
)

// Block jobs on a disk with a block export: QEMU 7.2 and 10.0 lose
// writes that an export's new clients make while a job switches the disk
// (export_repro_test.go measures it), so qchain refuses such a pivot up
// front while an export can write to the disk, names the export, and
// pivots anyway with --force. A read-only export does not stop it.

// addExport starts the VM's NBD server (once) and exports the disk's top
// node as id, writable or not.
func (vm *blockVM) addExport(t *testing.T, id string, writable bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sock := filepath.Join(filepath.Dir(vm.sock), "nbd")
	if _, err := os.Stat(sock); err != nil {
		if err := vm.mon.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}}, nil); err != nil {
			t.Fatalf("nbd-server-start: %v", err)
		}
	}
	disks, err := qmp.DiskChains(ctx, vm.mon)
	if err != nil {
		t.Fatal(err)
	}
	top := ""
	for _, d := range disks {
		if d.Device == vm.disk || (d.QDev != "" && qmp.QDevID(d.QDev) == vm.disk) {
			top = d.NodeName
		}
	}
	if top == "" {
		t.Fatalf("no disk %s in %+v", vm.disk, disks)
	}
	if err := vm.mon.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": id, "name": id, "node-name": top, "writable": writable}, nil); err != nil {
		t.Fatalf("block-export-add %s: %v", id, err)
	}
}

// TestBlockExportRefusal: with a writable NBD export on the top node, a
// pivot (active commit, copy, blockjob --pivot) is refused before any job
// starts, with one line that names the export and --force; the files stay
// as they were and a copy's DEST is not created. --force pivots.
func TestBlockExportRefusal(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	for _, kind := range []vmKind{vmDrive, vmDeviceShared} {
		for _, tc := range []struct {
			name string
			cmd  []string // --qmp SOCKET and the disk are added
			dest string
			top  string
		}{
			{"commit-pivot", []string{"blockcommit", "--active", "--pivot"}, "", "base.qcow2"},
			{"copy-pivot", []string{"blockcopy", "--pivot", "--shallow"}, "copy.qcow2", "copy.qcow2"},
		} {
			t.Run(tc.name+map[vmKind]string{vmDrive: "-drive", vmDeviceShared: "-device"}[kind], func(t *testing.T) {
				t.Parallel()
				c := newBlockChain(t)
				vm := startVM(t, c, kind, "")
				vm.addExport(t, "backup0", true)
				args := append([]string{tc.cmd[0], "--qmp", vm.sock}, tc.cmd[1:]...)
				args = append(args, vm.disk)
				if tc.dest != "" {
					args = append(args, c.path(tc.dest))
				}
				before, err := fingerprint(c.dir)
				if err != nil {
					t.Fatal(err)
				}
				label := map[vmKind]string{vmDrive: "vda", vmDeviceShared: "top"}[kind]
				r := qchainRun(bin, c.dir, args...)
				wantOneLineError(t, r, 1, label+": refusing", `"backup0"`, "writable", "active.qcow2", "--force")
				if jobs := vm.jobs(t); len(jobs) != 0 {
					t.Errorf("jobs after the refusal: %+v", jobs)
				}
				after, err := fingerprint(c.dir)
				if err != nil {
					t.Fatal(err)
				}
				if d := fingerprintDiff(before, after); d != "" {
					t.Errorf("files changed by the refused %s:\n%s", tc.cmd[0], d)
				}

				forced := append([]string{tc.cmd[0], "--force"}, args[1:]...)
				mustQchain(t, bin, c.dir, forced...)
				r = mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock, "--output=json")
				if got := disksTop(t, r.Stdout, vm.disk); got != tc.top {
					t.Errorf("after --force %s is on %s, want %s", vm.disk, got, tc.top)
				}
				vm.quit()
				c.checkContent(t, bin, c.path(tc.top))
			})
		}
	}
}

// TestBlockExportPivotLater: an active commit without --pivot starts on a
// disk with a writable export (nothing switches yet) and is left ready;
// blockjob --pivot then refuses it (the export sits on the job's filter
// node by then), the job stays ready, and --force pivots.
func TestBlockExportPivotLater(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	c := newBlockChain(t)
	vm := startVM(t, c, vmDrive, "")
	vm.addExport(t, "mig", true)
	mustQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--active", "--wait", "vda")
	r := qchainRun(bin, c.dir, "blockjob", "--qmp", vm.sock, "--pivot", "vda")
	wantOneLineError(t, r, 1, "vda", `"mig"`, "--force")
	if jobs := vm.jobs(t); len(jobs) != 1 || jobs[0].Status != qmp.JobReady {
		t.Errorf("jobs after the refused pivot: %+v, want the commit still ready", jobs)
	}
	r = qchainRun(bin, c.dir, "blockjob", "--qmp", vm.sock, "--force", "vda")
	wantOneLineError(t, r, 1, "--force", "--pivot")
	mustQchain(t, bin, c.dir, "blockjob", "--qmp", vm.sock, "--pivot", "--force", "vda")
	r = mustQchain(t, bin, c.dir, "disks", "--qmp", vm.sock, "--output=json")
	if got := disksTop(t, r.Stdout, "vda"); got != "base.qcow2" {
		t.Errorf("after blockjob --pivot --force vda is on %s", got)
	}
	vm.quit()
	c.checkContent(t, bin, c.base)
}

// TestBlockExportReadOnly: a read-only export does not stop a pivot, on a
// -drive disk and on a disk behind a device (whose own backend writes).
func TestBlockExportReadOnly(t *testing.T) {
	bin := requireTools(t)
	t.Parallel()
	for _, kind := range []vmKind{vmDrive, vmDeviceShared} {
		t.Run(map[vmKind]string{vmDrive: "drive", vmDeviceShared: "device"}[kind], func(t *testing.T) {
			t.Parallel()
			c := newBlockChain(t)
			vm := startVM(t, c, kind, "")
			vm.addExport(t, "ro0", false)
			r := mustQchain(t, bin, c.dir, "blockcommit", "--qmp", vm.sock, "--active", "--pivot", vm.disk)
			if strings.Contains(string(r.Stderr), "ro0") {
				t.Errorf("the read-only export is reported: %s", r.Stderr)
			}
			vm.quit()
			c.checkContent(t, bin, c.base)
		})
	}
}
