package chain

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qchain/qchain/qcow2"
)

func TestCheckCommand(t *testing.T) {
	for _, tc := range []struct {
		name    string
		command []string
		want    string // "" accepts
	}{
		{"none", nil, ""},
		{"device", []string{"qemu", "-device", "virtio-blk-pci,drive=vda", "-m", "256"}, ""},
		{"other drive", []string{"qemu", "-drive", "if=none,id=cd,file=x.iso"}, ""},
		{"drive of a target", []string{"qemu", "-drive", "if=none,id=vda,file=x"}, "names disk vda"},
		{"drive node of a target", []string{"qemu", "-drive", "file=x,node-name=vda"}, "names disk vda"},
		{"blockdev json", []string{"qemu", "-blockdev", `{"driver":"raw","node-name":"vda"}`}, "names disk vda"},
		{"blockdev keys", []string{"qemu", "--blockdev", "driver=raw,node-name=vda,file.driver=file"}, "names disk vda"},
		{"comma escaped", []string{"qemu", "-drive", "file=a,,id=vda,id=cd"}, ""},
		{"qmp", []string{"qemu", "-qmp", "unix:/x,server=on"}, "-qmp is not allowed"},
		{"qmp-pretty", []string{"qemu", "-qmp-pretty", "unix:/x"}, "is not allowed"},
		{"daemonize", []string{"qemu", "--daemonize"}, "is not allowed"},
		{"incoming", []string{"qemu", "-incoming", "defer"}, "is not allowed"},
		{"pidfile", []string{"qemu", "-pidfile", "p"}, "is not allowed"},
		{"no binary", []string{"-m", "1"}, "must start with the qemu binary"},
		{"drive without value", []string{"qemu", "-drive"}, "has no value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := &VM{Name: "v", Disks: []Disk{{Target: "vda"}}, Command: tc.command, QMP: "/run/q"}
			err := vm.checkCommand()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("error of more than one line: %q", err)
			}
		})
	}
}

func TestQemuArgs(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a,b.qcow2")
	if err := qcow2.Create(img, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	vm := &VM{Name: "v", Disks: []Disk{{Target: "vda", Active: img}}, QMP: "/run/q.sock", Command: []string{"qemu", "-m", "64"}}
	got, err := vm.QemuArgs(LaunchOptions{Incoming: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-m", "64", "-drive", "if=none,id=vda,file=" + strings.ReplaceAll(img, ",", ",,") + ",format=qcow2",
		"-qmp", "unix:/run/q.sock,server=on,wait=off", "-S", "-incoming", "defer"}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	vm.Command = nil
	if _, err := vm.QemuArgs(LaunchOptions{}); err == nil || !strings.Contains(err.Error(), "no qemu command line") {
		t.Fatalf("a VM without a command line: %v", err)
	}
}

// TestDefineCommand checks that vm define keeps the command line, gives
// the VM a QMP socket in its state folder, and that metadata written
// before command lines existed still loads.
func TestDefineCommand(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	if err := qcow2.Create(img, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	st := &Store{Dir: filepath.Join(dir, "state")}
	if err := st.Define(&VM{Name: "v", Disks: []Disk{{Target: "vda", Active: img}}, Command: []string{"qemu", "-m", "64"}}); err != nil {
		t.Fatal(err)
	}
	vm, err := st.Load("v")
	if err != nil {
		t.Fatal(err)
	}
	if vm.QMP != filepath.Join(st.Dir, "vms", "v", "qmp.sock") || !slices.Equal(vm.Command, []string{"qemu", "-m", "64"}) {
		t.Fatalf("loaded %+v", vm)
	}
	if err := st.Define(&VM{Name: "w", Disks: []Disk{{Target: "vda", Active: img}}, Command: []string{"qemu", "-pidfile", "x"}}); err == nil {
		t.Fatal("a command line with -pidfile was accepted")
	}
	old := `{"name":"o","disks":[{"target":"vda","active":"` + img + `"}],"snapshots":[{"name":"s","created":"2024-01-01T00:00:00Z","disks":[{"target":"vda","file":"` + img + `"}]}],"current":"s"}`
	if err := os.MkdirAll(filepath.Join(st.Dir, "vms", "o"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(st.Dir, "vms", "o", "vm.json"), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	vm, err = st.Load("o")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Command != nil || vm.Snapshots[0].Memory != nil {
		t.Fatalf("old metadata loaded as %+v", vm)
	}
	if p := st.Process(vm); p.Running {
		t.Fatalf("a VM never started runs: %+v", p)
	}
}
