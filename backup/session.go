package backup

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/qchain/qchain/chain"
	"github.com/qchain/qchain/qcow2"
	"github.com/qchain/qchain/qmp"
)

// session is a QMP monitor that has every disk of a VM open: the VM's own
// qemu (live) or a private qemu-storage-daemon (offline).
type session struct {
	conn   *qmp.Conn
	live   bool
	daemon *qmp.StorageDaemon
	disks  map[string]sessionDisk
}

// sessionDisk is how the monitor names one disk.
type sessionDisk struct {
	// Device is what blockdev-backup's device names: the -drive id or
	// the top node.
	Device string
	// Node is the top format node, where the bitmaps are.
	Node string
	// Layers are the disk's format nodes from the top (Node) down.
	Layers []sessionLayer
	// Writable is the index of the deepest layer open for writing: 0
	// live and mostly offline, deeper offline when layers below the
	// active image hold bitmaps of earlier points, which the run then
	// removes (staleDepth).
	Writable int
}

// sessionLayer is one image of a disk's chain in the monitor.
type sessionLayer struct {
	Node, File string
}

// layerBitmaps are the bitmaps of one layer of a disk.
type layerBitmaps struct {
	sessionLayer
	Bitmaps []qmp.DirtyBitmapInfo
}

// daemonStartTimeout bounds the start of a storage daemon.
const daemonStartTimeout = 30 * time.Second

// openSession connects to the VM's qemu when its monitor answers, and
// checks that it writes to the images the metadata names; otherwise it
// starts a storage daemon on the disks' chains (their active images
// writable, for the bitmaps, and the layers below down to the deepest one
// that holds a bitmap whose name starts with stale, unless another process
// holds one of them).
func openSession(ctx context.Context, vm *chain.VM, storageDaemon, stale string) (*session, error) {
	if vm.QMP != "" {
		if conn, err := chain.DialVM(ctx, vm); err == nil {
			s := &session{conn: conn, live: true, disks: map[string]sessionDisk{}}
			if err := s.liveDisks(ctx, vm); err != nil {
				conn.Close()
				return nil, err
			}
			return s, nil
		}
	}
	s := &session{disks: map[string]sessionDisk{}}
	var blockdevs []any
	for i, d := range vm.Disks {
		if err := qcow2.CheckNotInUse(d.Active); err != nil {
			return nil, fmt.Errorf("VM %s disk %s: %w (a qemu that is not the VM's monitor %q has it open?)", vm.Name, d.Target, err, vm.QMP)
		}
		depth, err := staleDepth(d.Active, stale)
		if err != nil {
			return nil, fmt.Errorf("VM %s disk %s: %w", vm.Name, d.Target, err)
		}
		bds, err := chain.DaemonBlockdevs(d.Active, depth)
		if err != nil {
			return nil, fmt.Errorf("VM %s disk %s: %w", vm.Name, d.Target, err)
		}
		prefix := fmt.Sprintf("d%d-", i)
		var layers []sessionLayer
		for _, bd := range bds {
			m, ok := bd.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("internal error: blockdev %T", bd)
			}
			m["node-name"] = prefix + m["node-name"].(string)
			if b, ok := m["backing"].(string); ok {
				m["backing"] = prefix + b
			}
			file, _ := m["file"].(map[string]any)
			name, _ := file["filename"].(string)
			// DaemonBlockdevs lists the base first.
			layers = append([]sessionLayer{{Node: m["node-name"].(string), File: name}}, layers...)
			blockdevs = append(blockdevs, m)
		}
		s.disks[d.Target] = sessionDisk{Device: prefix + "l0", Node: prefix + "l0", Layers: layers, Writable: depth}
	}
	sctx, cancel := context.WithTimeout(ctx, daemonStartTimeout)
	defer cancel()
	d, err := qmp.StartStorageDaemon(sctx, qmp.StorageDaemonOptions{Binary: storageDaemon, Blockdevs: blockdevs, DieWithParent: true})
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", vm.Name, err)
	}
	s.daemon, s.conn = d, d.Conn
	return s, nil
}

// liveDisks finds the VM's disks in its running qemu.
func (s *session) liveDisks(ctx context.Context, vm *chain.VM) error {
	running, err := qmp.DiskChains(ctx, s.conn)
	if err != nil {
		return fmt.Errorf("VM %s: reading the running disks: %w", vm.Name, err)
	}
	for _, d := range vm.Disks {
		rd := chain.RunningDisk(running, d.Target)
		if rd == nil || len(rd.Chain) == 0 {
			return fmt.Errorf("VM %s: the running qemu has no disk %s", vm.Name, d.Target)
		}
		if top := qmp.PlainFilename(rd.Chain[0].Filename); !chain.SameFile(top, d.Active) {
			return fmt.Errorf("VM %s disk %s: the running qemu writes to %s, but the metadata says %s", vm.Name, d.Target, top, d.Active)
		}
		sd := sessionDisk{Device: rd.Name(), Node: rd.Chain[0].NodeName}
		for _, l := range rd.Chain {
			sd.Layers = append(sd.Layers, sessionLayer{Node: l.NodeName, File: qmp.PlainFilename(l.Filename)})
		}
		s.disks[d.Target] = sd
	}
	return nil
}

// close ends the session: an offline daemon quits, which stores the
// persistent bitmaps into the images.
func (s *session) close() error {
	if s.daemon != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*qmp.DefaultQuitTimeout)
		defer cancel()
		return s.daemon.Close(ctx)
	}
	return s.conn.Close()
}

// crash ends the session as the death of qchain's process would: a
// storage daemon is killed (Pdeathsig), a live qemu keeps its jobs, nodes
// and bitmaps.
func (s *session) crash() {
	if s.daemon != nil {
		s.daemon.Kill()
		return
	}
	_ = s.conn.Close()
}

// bitmaps returns the bitmaps of each layer of each disk, top first, by
// target.
func (s *session) bitmaps(ctx context.Context) (map[string][]layerBitmaps, error) {
	byNode, err := s.conn.NodeBitmaps(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]layerBitmaps{}
	for t, d := range s.disks {
		for _, l := range d.Layers {
			out[t] = append(out[t], layerBitmaps{sessionLayer: l, Bitmaps: byNode[l.Node]})
		}
	}
	return out, nil
}

// clearLeftovers removes a job with id left by an interrupted run in a
// live qemu, and the target node it left, and returns what it removed
// (errors are ignored: what is still in the way makes the next command
// fail with QEMU's message).
func (s *session) clearLeftovers(ctx context.Context, jobID, node string) (removed []string) {
	if info, err := qmp.FindJob(ctx, s.conn, jobID); err == nil {
		if info.Status != "concluded" {
			_ = s.conn.JobCancel(ctx, jobID)
			for i := 0; i < 100; i++ {
				if info, err = qmp.FindJob(ctx, s.conn, jobID); err != nil || info.Status == "concluded" {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		_ = s.conn.JobDismiss(ctx, jobID)
		removed = append(removed, "job "+jobID)
	}
	if s.conn.BlockdevDel(ctx, node) == nil {
		removed = append(removed, "node "+node)
	}
	return removed
}

// staleDepth returns how deep an offline run opens top's chain for
// writing: the deepest layer below top that holds a bitmap whose name
// starts with prefix (a snapshot left it there, disabled, and once the
// run stores its point no later point asks for it), but no deeper than
// the first layer that another process has open (a base image that
// other VMs share), or that this one may not write. 0 when there is
// none.
func staleDepth(top, prefix string) (int, error) {
	c, err := qcow2.OpenChain(top, qcow2.ChainOptions{})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	deepest := 0
	for i, l := range c.Layers {
		f, ok := l.(*qcow2.File)
		if i == 0 || !ok {
			continue
		}
		bms, err := f.Bitmaps()
		if err != nil {
			return 0, err
		}
		for _, b := range bms {
			if strings.HasPrefix(b.Name, prefix) {
				deepest = i
			}
		}
	}
	for i := 1; i <= deepest; i++ {
		if qcow2.CheckNotInUse(c.Layers[i].Filename()) != nil {
			return i - 1, nil
		}
	}
	return deepest, nil
}
