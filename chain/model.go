package chain

import (
	"fmt"
	"slices"
	"time"
)

// VM is a virtual machine's disks and snapshot tree, as stored in the
// state directory.
type VM struct {
	Name  string `json:"name"`
	Disks []Disk `json:"disks"`
	// QMP and QGA are the unix sockets of the VM's QMP monitor and guest
	// agent, when it has them.
	QMP string `json:"qmp,omitempty"`
	QGA string `json:"qga,omitempty"`
	// Command is the VM's qemu command line, binary first, when qchain
	// starts the VM (StartVM); empty for a VM started elsewhere. Disks
	// are named by their targets as drive ids: qchain adds one -drive per
	// disk on its active image, and the QMP monitor (see QemuArgs).
	Command []string `json:"command,omitempty"`
	// NVRAM is the VM's firmware variable store, when it has one.
	NVRAM string `json:"nvram,omitempty"`
	// Snapshots in creation order.
	Snapshots []*Snapshot `json:"snapshots"`
	// Current is the snapshot the current state descends from ("" before
	// the first snapshot or after its deletion up to the root).
	Current string `json:"current,omitempty"`
	// Owned lists the files qchain created for this VM (overlays).
	Owned []string `json:"owned,omitempty"`
	// Originals lists the images the VM was defined on (vm define
	// --disk): they belong to the VM like its overlays. Owned and
	// Originals are the VM's files, which a snapshot operation removes
	// once nothing needs them (see the package doc).
	Originals []string `json:"originals,omitempty"`
	// LastRevert is the VM's latest revert, if any: what its disks hold
	// since then differs from what they held before by writes no dirty
	// bitmap recorded (see bitmaps.go), so a user of the bitmaps (an
	// incremental backup from before it) must not trust them, except
	// those the revert kept (Revert.Kept).
	LastRevert *Revert `json:"last_revert,omitempty"`
}

// Revert records a revert of a VM to a snapshot.
type Revert struct {
	Snapshot string    `json:"snapshot"`
	Time     time.Time `json:"time"`
	// Kept names the bitmaps the revert gave every new overlay, recording
	// (see bitmaps.go): bitmaps that recorded the snapshot's files until
	// the snapshot's instant, so that the union of each over the chain
	// still holds every write since it began. The revert lost no write
	// that such a bitmap should show; for every other bitmap it did.
	Kept []string `json:"kept_bitmaps,omitempty"`
	// Lossy is the time of the latest revert before this one that kept
	// no bitmap (a revert in place of internal snapshots, or one made
	// before reverts kept bitmaps), when this one kept some: a bitmap
	// older than that may miss what that revert changed.
	Lossy *time.Time `json:"lossy,omitempty"`
}

// Disk is one disk of a VM.
type Disk struct {
	Target string `json:"target"`
	// Active is the absolute path of the image the guest writes to.
	Active string `json:"active"`
}

// Snapshot is one point in time of every disk of a VM.
type Snapshot struct {
	Name        string         `json:"name"`
	Parent      string         `json:"parent,omitempty"`
	Created     time.Time      `json:"created"`
	Description string         `json:"description,omitempty"`
	Disks       []SnapshotDisk `json:"disks"`
	// Memory is the VM's RAM and device state at the snapshot's instant,
	// for a checkpoint with memory; nil for a disk-only snapshot.
	Memory *MemoryState `json:"memory,omitempty"`
	// Internal says the snapshot lives inside the disks' images (a qcow2
	// internal snapshot tagged with its name in each of Disks' files, the
	// memory state in the first one): no overlay was created for it.
	Internal bool `json:"internal,omitempty"`
}

// MemoryState is where a checkpoint keeps its RAM and device state: a
// QEMU migration stream in a file beside the disks.
type MemoryState struct {
	// File is the absolute path of the state file.
	File string `json:"file"`
	// Format is MemoryStream or MemoryMappedRAM: how QEMU wrote the file,
	// and so how it must load it.
	Format string `json:"format"`
	// Size is the file's size once saved: a shorter file is truncated.
	Size int64 `json:"size"`
	// Running says whether the guest ran when the checkpoint was taken.
	Running bool `json:"running"`
	// NVRAM is the copy of the VM's firmware variable store (VM.NVRAM)
	// taken at the checkpoint's instant, when the VM has one.
	NVRAM string `json:"nvram,omitempty"`
}

// Memory state formats.
const (
	// MemoryStream is QEMU's sequential migration stream (any version),
	// written and read through a descriptor qchain passes.
	MemoryStream = "stream"
	// MemoryMappedRAM is the stream with the mapped-ram capability: RAM
	// pages at fixed offsets of a file: URI's file (QEMU 9.0+).
	MemoryMappedRAM = "mapped-ram"
	// MemoryInternal is the state saved inside a qcow2 image with the
	// internal snapshot (snapshot-save): MemoryState.File is that image.
	MemoryInternal = "internal"
)

// SnapshotDisk says which file holds a snapshot's content of one disk
// (with that file's backing chain).
type SnapshotDisk struct {
	Target string `json:"target"`
	File   string `json:"file"`
	// Bitmaps names the persistent bitmaps that recorded the writes into
	// File until the snapshot's instant, when they moved to the new
	// overlay (see bitmaps.go): a revert to the snapshot gives its new
	// overlay recording bitmaps of these names.
	Bitmaps []string `json:"bitmaps,omitempty"`
}

// Snapshot returns the named snapshot or nil.
func (vm *VM) Snapshot(name string) *Snapshot {
	for _, s := range vm.Snapshots {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Children returns the names of the snapshots whose parent is name ("" for
// the roots), in creation order.
func (vm *VM) Children(name string) []string {
	var out []string
	for _, s := range vm.Snapshots {
		if s.Parent == name {
			out = append(out, s.Name)
		}
	}
	return out
}

// Disk returns the disk with the target or nil.
func (vm *VM) Disk(target string) *Disk {
	for i := range vm.Disks {
		if vm.Disks[i].Target == target {
			return &vm.Disks[i]
		}
	}
	return nil
}

// File returns the file of snapshot s for target.
func (s *Snapshot) File(target string) string {
	for _, d := range s.Disks {
		if d.Target == target {
			return d.File
		}
	}
	return ""
}

func (s *Snapshot) setFile(target, file string) {
	for i := range s.Disks {
		if s.Disks[i].Target == target {
			s.Disks[i].File = file
		}
	}
}

// files returns the VM's files: Owned, then Originals, each once.
func (vm *VM) files() []string {
	var out []string
	for _, f := range append(slices.Clone(vm.Owned), vm.Originals...) {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// isOriginal reports whether the VM was defined on the file.
func (vm *VM) isOriginal(file string) bool { return slices.Contains(vm.Originals, file) }

// disown drops the file from the VM's files.
func (vm *VM) disown(file string) {
	vm.Owned = slices.DeleteFunc(vm.Owned, func(f string) bool { return f == file })
	vm.Originals = slices.DeleteFunc(vm.Originals, func(f string) bool { return f == file })
}

// Ancestors returns the names from name up to the root, name first.
func (vm *VM) Ancestors(name string) []string {
	var out []string
	for name != "" {
		s := vm.Snapshot(name)
		if s == nil || slices.Contains(out, name) {
			break
		}
		out = append(out, name)
		name = s.Parent
	}
	return out
}

// Subtree returns name and every snapshot below it.
func (vm *VM) Subtree(name string) []string {
	out := []string{name}
	for i := 0; i < len(out); i++ {
		out = append(out, vm.Children(out[i])...)
	}
	return out
}

// validate checks the model's own consistency.
func (vm *VM) validate() error {
	if err := validName("VM", vm.Name); err != nil {
		return err
	}
	if len(vm.Disks) == 0 {
		return fmt.Errorf("VM %s has no disks", vm.Name)
	}
	seen := map[string]bool{}
	for _, d := range vm.Disks {
		if err := validName("disk target", d.Target); err != nil {
			return err
		}
		if seen[d.Target] {
			return fmt.Errorf("VM %s: disk target %s given twice", vm.Name, d.Target)
		}
		seen[d.Target] = true
	}
	names := map[string]bool{}
	for _, s := range vm.Snapshots {
		if names[s.Name] {
			return fmt.Errorf("VM %s: snapshot %s appears twice", vm.Name, s.Name)
		}
		names[s.Name] = true
	}
	for _, s := range vm.Snapshots {
		if s.Parent != "" && !names[s.Parent] {
			return fmt.Errorf("VM %s: snapshot %s has unknown parent %s", vm.Name, s.Name, s.Parent)
		}
	}
	if vm.Current != "" && !names[vm.Current] {
		return fmt.Errorf("VM %s: current snapshot %s is unknown", vm.Name, vm.Current)
	}
	return nil
}

// validName accepts names safe as file name parts.
func validName(what, s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("%s name %q must be 1 to 64 characters", what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') || s[0] == '.' {
			return fmt.Errorf("%s name %q may hold only letters, digits, '-', '_' and '.' (not first)", what, s)
		}
	}
	return nil
}
