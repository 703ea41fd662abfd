package chain

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// Manager runs snapshot operations on the VMs of a state directory.
type Manager struct {
	Store *Store
	Ctx   context.Context
	// StorageDaemon overrides the qemu-storage-daemon binary for offline
	// data moves.
	StorageDaemon string
	// Progress, when set, receives the progress of data moves.
	Progress func(s Step, current, total int64)
	// Now returns the time recorded in new snapshots (tests fix it).
	Now func() time.Time
	// BeforeStep, when set, is called before each journal step runs
	// (tests stop an operation there to check recovery at every step).
	BeforeStep func(op string, index int, s Step)
	// AgentTimeout bounds the handshake with the guest agent before a
	// quiesced snapshot; zero means DefaultAgentTimeout. The freeze itself
	// is not bounded: qemu-ga flushes the file systems first, which takes
	// as long as it takes (libvirt waits for it too); cancelling Ctx ends
	// it, and thaws.
	AgentTimeout time.Duration
}

// DefaultAgentTimeout is Manager.AgentTimeout's default. QEMU accepts a
// connection on the agent's socket whether or not qemu-ga runs in the
// guest, and without an agent nothing ever answers the handshake.
const DefaultAgentTimeout = 10 * time.Second

// cleanupTimeout bounds the clean-up of an operation that failed or was
// cancelled, which runs whatever happened to Ctx.
const cleanupTimeout = 30 * time.Second

// cleanupContext returns a context for the clean-up after a failure: not
// cancelled with ctx (an interrupt), bounded by cleanupTimeout.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

func (m *Manager) agentTimeout() time.Duration {
	if m.AgentTimeout > 0 {
		return m.AgentTimeout
	}
	return DefaultAgentTimeout
}

func (m *Manager) ctx() context.Context {
	if m.Ctx == nil {
		return context.Background()
	}
	return m.Ctx
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now().UTC().Truncate(time.Second)
}

// clone deep-copies a VM through JSON (the metadata is small).
func clone(vm *VM) *VM {
	b, _ := json.Marshal(vm)
	out := &VM{}
	json.Unmarshal(b, out)
	return out
}

// executor returns the executor for the VM: live when its QMP socket
// answers, offline otherwise.
func (m *Manager) executor(vm *VM) (*Offline, func(), error) {
	ex := &Offline{Ctx: m.ctx(), StorageDaemon: m.StorageDaemon, Progress: m.Progress}
	if vm.QMP == "" {
		return ex, func() {}, nil
	}
	conn, err := DialVM(m.ctx(), vm)
	if err != nil {
		return ex, func() {}, nil
	}
	ex.Live = &Live{Conn: conn, Progress: m.Progress}
	return ex, func() { conn.Close() }, nil
}

// liveExecutor is executor, and when the VM runs it also checks that
// qemu's disks are the ones the metadata names, running also's reads of
// the VM at the same time (their commands go out with the check's).
func (m *Manager) liveExecutor(vm *VM, also ...func(*Live) error) (*Offline, func(), error) {
	ex, done, err := m.executor(vm)
	if err != nil || ex.Live == nil {
		return ex, done, err
	}
	fs := []func() error{func() error { return ex.Live.verify(m.ctx(), vm) }}
	for _, f := range also {
		fs = append(fs, func() error { return f(ex.Live) })
	}
	if err := qmp.Together(fs...); err != nil {
		done()
		return nil, nil, err
	}
	return ex, done, nil
}

// overlayName derives a new overlay's path next to dir's images from the
// VM, disk and snapshot names, never an existing file.
func overlayName(dir, vm, target, snap string) string {
	base := filepath.Join(dir, fmt.Sprintf("%s.%s.%s", vm, target, snap))
	p := base + ".qcow2"
	for i := 2; ; i++ {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			return p
		}
		p = fmt.Sprintf("%s-%d.qcow2", base, i)
	}
}

// relName is how an overlay records its backing file: the base name when
// both are in one folder, else the absolute path.
func relName(overlay, backing string) string {
	if filepath.Dir(overlay) == filepath.Dir(backing) {
		return filepath.Base(backing)
	}
	return backing
}

func formatOf(file string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	return qcow2.ProbeFormat(f)
}

// Tree draws a chain as `base <- a <- b*` (the active image starred).
func Tree(files []string, active string) string {
	var parts []string
	for i := len(files) - 1; i >= 0; i-- {
		p := filepath.Base(files[i])
		if files[i] == active {
			p += "*"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " <- ")
}
