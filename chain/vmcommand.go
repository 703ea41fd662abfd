package chain

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// maxSocketPath is the longest unix socket path Linux accepts
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// ownedOptions are the qemu options qchain sets itself on the command
// line of a VM it starts, with the reason a user's own is refused.
var ownedOptions = map[string]string{
	"-qmp":        "qchain adds the VM's QMP monitor itself (vm define --qmp SOCKET names its socket)",
	"-qmp-pretty": "qchain adds the VM's QMP monitor itself (vm define --qmp SOCKET names its socket)",
	"-daemonize":  "qchain starts qemu in the background itself",
	"-incoming":   "qchain adds it to load a checkpoint's memory",
	"-pidfile":    "qchain keeps the VM's pid file in its state folder",
	"-loadvm":     "qchain adds it to revert an internal checkpoint",
}

// optionName returns the qemu option an argument names ("--drive" and
// "-drive" are the same option), or "" for a value.
func optionName(arg string) string {
	if !strings.HasPrefix(arg, "-") || len(arg) < 2 {
		return ""
	}
	return "-" + strings.TrimLeft(arg, "-")
}

// optionKeys splits a qemu option string "a=1,b=2" into its keys and
// values; ",," is a literal comma. A first element without '=' gets the
// key implied.
func optionKeys(s, implied string) map[string]string {
	out := map[string]string{}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	parts = append(parts, cur.String())
	for i, p := range parts {
		k, v, ok := strings.Cut(p, "=")
		if !ok && i == 0 && implied != "" {
			k, v = implied, p
		}
		out[k] = v
	}
	return out
}

// blockNames returns the id and node-name a -drive or -blockdev value
// gives its block backend or node.
func blockNames(opt, value string) []string {
	var names []string
	if opt == "-blockdev" && strings.HasPrefix(strings.TrimSpace(value), "{") {
		var js struct {
			NodeName string `json:"node-name"`
		}
		if json.Unmarshal([]byte(value), &js) == nil && js.NodeName != "" {
			names = append(names, js.NodeName)
		}
		return names
	}
	implied := ""
	if opt == "-drive" {
		implied = "file"
	}
	keys := optionKeys(value, implied)
	for _, k := range []string{"id", "node-name"} {
		if v := keys[k]; v != "" {
			names = append(names, v)
		}
	}
	return names
}

// checkCommand refuses a VM command line that sets what qchain owns: the
// QMP monitor, daemonizing, -incoming, the pid file, and the block
// backend or node of a disk target (qchain adds each disk's -drive on its
// current active image).
func (vm *VM) checkCommand() error {
	if len(vm.Command) == 0 {
		return nil
	}
	if strings.HasPrefix(vm.Command[0], "-") {
		return fmt.Errorf("VM %s: the command line after -- must start with the qemu binary, not the option %q", vm.Name, vm.Command[0])
	}
	args := vm.Command[1:]
	for i := 0; i < len(args); i++ {
		opt := optionName(args[i])
		if why, ok := ownedOptions[opt]; ok {
			return fmt.Errorf("VM %s: qemu option %s is not allowed: %s", vm.Name, args[i], why)
		}
		if opt != "-drive" && opt != "-blockdev" {
			continue
		}
		if i+1 >= len(args) {
			return fmt.Errorf("VM %s: qemu option %s has no value", vm.Name, args[i])
		}
		for _, n := range blockNames(opt, args[i+1]) {
			if vm.Disk(n) != nil {
				return fmt.Errorf("VM %s: qemu option %s %s names disk %s: qchain adds each disk's -drive on its current image; refer to it as drive=%s", vm.Name, args[i], args[i+1], n, n)
			}
		}
		i++
	}
	if vm.QMP != "" && len(vm.QMP) > maxSocketPath {
		return fmt.Errorf("VM %s: the QMP socket path %s is longer than %d bytes, the most a unix socket takes; give a shorter one with --qmp", vm.Name, vm.QMP, maxSocketPath)
	}
	return nil
}

// qemuOptEscape doubles the commas of a value inside a qemu option string.
func qemuOptEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// LaunchOptions say how QemuArgs starts a VM.
type LaunchOptions struct {
	// Paused starts the VM with its vCPUs stopped (-S).
	Paused bool
	// Incoming starts it waiting for migrate-incoming (-incoming defer,
	// and -S: qchain decides when it runs).
	Incoming bool
	// LoadVM starts it from the internal snapshot with that tag (-loadvm).
	LoadVM string
	// noneRunning: the caller made sure, under the VM's lock, that no
	// qemu of the VM runs (it stopped them), and launch need not look
	// through every process for one.
	noneRunning bool
}

// QemuArgs returns the arguments (without the binary) qchain runs vm's
// qemu with: the user's, then per disk `-drive
// if=none,id=TARGET,file=ACTIVE,format=FMT`, then the QMP monitor on
// vm.QMP; -S and -incoming defer as o asks.
func (vm *VM) QemuArgs(o LaunchOptions) ([]string, error) {
	if len(vm.Command) == 0 {
		return nil, fmt.Errorf("VM %s has no qemu command line: qchain cannot start it (define it with `qchain vm define %s --disk ... -- QEMU-BINARY ARGS...`)", vm.Name, vm.Name)
	}
	if err := vm.checkCommand(); err != nil {
		return nil, err
	}
	args := slices.Clone(vm.Command[1:])
	for _, d := range vm.Disks {
		format := formatOf(d.Active)
		if format == "" {
			return nil, fmt.Errorf("VM %s disk %s: cannot read %s", vm.Name, d.Target, d.Active)
		}
		args = append(args, "-drive", fmt.Sprintf("if=none,id=%s,file=%s,format=%s", d.Target, qemuOptEscape(d.Active), format))
	}
	args = append(args, "-qmp", "unix:"+qemuOptEscape(vm.QMP)+",server=on,wait=off")
	if o.Paused || o.Incoming {
		args = append(args, "-S")
	}
	if o.Incoming {
		args = append(args, "-incoming", "defer")
	}
	if o.LoadVM != "" {
		args = append(args, "-loadvm", o.LoadVM)
	}
	return args, nil
}

// defaultQMP is the QMP socket qchain gives a VM it starts when vm define
// names none: in the VM's state folder.
func (st *Store) defaultQMP(name string) (string, error) {
	p := filepath.Join(st.vmDir(name), "qmp.sock")
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return abs, nil
}
