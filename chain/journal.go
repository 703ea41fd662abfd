package chain

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Step kinds. Every step can be run again after an interruption with the
// same result (roll forward), which is what Recover relies on.
const (
	// StepCreateOverlay creates File, an empty qcow2 overlay of Backing.
	StepCreateOverlay = "create-overlay"
	// StepLiveSnapshot makes the overlays of Targets the running VM's
	// active images in one QMP transaction.
	StepLiveSnapshot = "live-snapshot"
	// StepCarryBitmaps gives File, the new overlay of Base, the
	// persistent bitmaps that record Base's writes, and disables them on
	// Base (offline; live, StepLiveSnapshot does it in its transaction).
	StepCarryBitmaps = "carry-bitmaps"
	// StepResumeBitmaps gives File, a revert's new overlay of Base, an
	// empty recording persistent bitmap for each of Bitmaps that Base
	// holds (consistent): those recorded Base's writes until the
	// snapshot's instant, and go on recording on the new branch.
	StepResumeBitmaps = "resume-bitmaps"
	// StepPull copies into File every byte it reads through its backing
	// chain down to (not including) Base; "" pulls everything. File's
	// backing file becomes Base. Offline, a pull with nothing to copy is
	// that backing file rewrite alone, done natively.
	StepPull = "pull"
	// StepCommit copies Top's data into Base (Top's backing file); Base
	// then reads as Top did. Offline, a commit of a Top that allocates
	// nothing leaves Base as it is, with no block job.
	StepCommit = "commit"
	// StepRebase rewrites File's recorded backing name to Backing, which
	// reads the same as the old one (no data moves).
	StepRebase = "rebase"
	// StepRemove deletes File, which nothing needs any more.
	StepRemove = "remove"
	// StepSaveMemory saves the running VM's RAM and device state into
	// File (a migration in Format) and, at the instant the migration has
	// stopped the vCPUs and before it writes the device state, makes the
	// overlays Files of Targets active in one transaction: memory and
	// disks from one instant. Without Live the vCPUs are stopped first.
	StepSaveMemory = "save-memory"
	// StepResume runs the VM's vCPUs again (QMP cont) unless they run.
	StepResume = "resume"
	// StepLoadMemory starts the VM (with the disks the operation leaves)
	// waiting for an incoming migration, loads the state in File (in
	// Format) into it, and runs it unless Paused.
	StepLoadMemory = "load-memory"
	// StepInternalSave takes internal snapshot Tag of Targets' active
	// images Files in the running VM, its state saved into File
	// (snapshot-save).
	StepInternalSave = "internal-save"
	// StepInternalLoad reverts Targets' images Files to internal snapshot
	// Tag and loads the VM's state from File: snapshot-load in the
	// running VM, else qemu started with -loadvm; the VM runs unless
	// Paused.
	StepInternalLoad = "internal-load"
	// StepInternalDelete deletes internal snapshot Tag from Files.
	StepInternalDelete = "internal-delete"
	// StepInternalSnapshot takes disk-only internal snapshot Tag of
	// Targets' active images Files, all at one instant: in the running
	// VM one transaction of blockdev-snapshot-internal-sync, offline one
	// image after the other (nothing writes to them). Images that hold
	// Tag already are skipped, so a rerun finishes an interrupted one.
	StepInternalSnapshot = "internal-snapshot"
	// StepInternalApply reverts the images Files of Targets to their
	// internal snapshot Tag, natively, with no process holding them. An
	// image whose state already is Tag's is left as it is.
	StepInternalApply = "internal-apply"
)

// Step is one action of a plan.
type Step struct {
	Kind       string   `json:"kind"`
	Target     string   `json:"target,omitempty"` // disk target
	File       string   `json:"file,omitempty"`
	Top        string   `json:"top,omitempty"`
	Base       string   `json:"base,omitempty"`
	Backing    string   `json:"backing,omitempty"`
	BackingFmt string   `json:"backing_format,omitempty"`
	Targets    []string `json:"targets,omitempty"`
	Files      []string `json:"files,omitempty"`
	// Format, Live and Paused describe a memory step (StepSaveMemory,
	// StepLoadMemory).
	Format string `json:"format,omitempty"`
	Live   bool   `json:"live,omitempty"`
	Paused bool   `json:"paused,omitempty"`
	// NVRAM and NVRAMCopy are the VM's firmware variable store and the
	// checkpoint's copy of it: a memory step copies the one to the
	// other (StepSaveMemory) or back (StepLoadMemory).
	NVRAM     string `json:"nvram,omitempty"`
	NVRAMCopy string `json:"nvram_copy,omitempty"`
	// Tag is an internal snapshot's name in the images.
	Tag string `json:"tag,omitempty"`
	// Bitmaps are the bitmap names of StepResumeBitmaps.
	Bitmaps []string `json:"bitmaps,omitempty"`
	// Bytes is what the step copies, as measured when planned.
	Bytes uint64 `json:"bytes,omitempty"`
	Why   string `json:"why,omitempty"`
	Done  bool   `json:"done"`
}

// String describes the step in one line.
func (s Step) String() string {
	switch s.Kind {
	case StepCreateOverlay:
		return fmt.Sprintf("create overlay %s on %s", s.File, s.Backing)
	case StepLiveSnapshot:
		return fmt.Sprintf("switch the running VM's disks %v to new overlays in one transaction", s.Targets)
	case StepCarryBitmaps:
		return fmt.Sprintf("move the dirty bitmaps recording into %s to %s", s.Base, s.File)
	case StepResumeBitmaps:
		return fmt.Sprintf("give %s recording bitmaps %s, which recorded %s until the snapshot", s.File, strings.Join(s.Bitmaps, ", "), s.Base)
	case StepPull:
		base := s.Base
		if base == "" {
			base = "(nothing: full copy)"
		}
		if s.Bytes == 0 && s.Base == "" {
			return fmt.Sprintf("pull into %s (nothing to copy: it no longer needs a backing file)", s.File)
		}
		if s.Bytes == 0 {
			return fmt.Sprintf("pull into %s down to %s (nothing to copy: only its backing file name changes)", s.File, base)
		}
		return fmt.Sprintf("pull into %s down to %s (%d bytes)", s.File, base, s.Bytes)
	case StepCommit:
		if s.Bytes == 0 {
			return fmt.Sprintf("commit %s into %s (nothing to copy)", s.Top, s.Base)
		}
		return fmt.Sprintf("commit %s into %s (%d bytes)", s.Top, s.Base, s.Bytes)
	case StepRebase:
		return fmt.Sprintf("rebase %s onto %s (metadata only)", s.File, s.Backing)
	case StepRemove:
		return fmt.Sprintf("remove %s", s.File)
	case StepSaveMemory:
		how := "with the vCPUs stopped"
		if s.Live {
			how = "while the guest runs, the vCPUs stopped for the last part"
		}
		return fmt.Sprintf("save the VM's memory into %s (%s, %s) and switch disks %v to new overlays at that instant", s.File, s.Format, how, s.Targets)
	case StepResume:
		return "resume the VM's vCPUs"
	case StepInternalSave:
		return fmt.Sprintf("save internal checkpoint %s in %v (memory in %s)", s.Tag, s.Files, s.File)
	case StepInternalLoad:
		return fmt.Sprintf("revert %v to internal checkpoint %s and load its memory", s.Files, s.Tag)
	case StepInternalDelete:
		return fmt.Sprintf("delete internal snapshot %s from %v", s.Tag, s.Files)
	case StepInternalSnapshot:
		return fmt.Sprintf("take internal snapshot %s of %v at one instant", s.Tag, s.Files)
	case StepInternalApply:
		return fmt.Sprintf("revert %v to internal snapshot %s", s.Files, s.Tag)
	case StepLoadMemory:
		then := "and run it"
		if s.Paused {
			then = "and leave it paused"
		}
		return fmt.Sprintf("start the VM and load its memory from %s (%s) %s", s.File, s.Format, then)
	}
	return s.Kind
}

// Journal is an operation in progress: its steps, which are done, and the
// metadata to save when all are.
type Journal struct {
	Op       string    `json:"op"`
	Snapshot string    `json:"snapshot"`
	Started  time.Time `json:"started"`
	Steps    []Step    `json:"steps"`
	// Final is the VM's metadata once every step is done.
	Final *VM `json:"final"`
	// Live says whether the plan was made for a running VM.
	Live bool `json:"live"`
}

func (j *Journal) nextStep() int {
	for i, s := range j.Steps {
		if !s.Done {
			return i
		}
	}
	return len(j.Steps)
}

func (l *Locked) journalPath() string { return filepath.Join(l.st.vmDir(l.VM.Name), "journal.json") }

// journal returns the unfinished journal, or nil.
func (l *Locked) journal() (*Journal, error) {
	b, err := os.ReadFile(l.journalPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	j := &Journal{}
	if err := json.Unmarshal(b, j); err != nil {
		return nil, fmt.Errorf("VM %s: journal %s is corrupt: %w", l.VM.Name, l.journalPath(), err)
	}
	return j, nil
}

func (l *Locked) writeJournal(j *Journal) error {
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(l.journalPath(), append(b, '\n'))
}

func (l *Locked) dropJournal() error {
	if err := os.Remove(l.journalPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(filepath.Dir(l.journalPath()))
}

// StepError reports a journal step that failed: the operation stays
// journaled for Recover.
type StepError struct {
	VM, Op, Snapshot string
	// Index is the step's index in the journal (0-based).
	Index int
	Step  Step
	Err   error
}

func (e *StepError) Error() string {
	return fmt.Sprintf("VM %s: %s of %s: step %d (%s): %s; the operation is journaled: fix the cause and run `qchain recover %s`",
		e.VM, e.Op, e.Snapshot, e.Index+1, e.Step, e.causeText(), e.VM)
}

// Cause is the step's error as the step's description completes it: it
// unwraps to Err.
func (e *StepError) Cause() error { return &causeError{text: e.causeText(), err: e.Err} }

type causeError struct {
	text string
	err  error
}

func (c *causeError) Error() string { return c.text }
func (c *causeError) Unwrap() error { return c.err }

// causeText is the step's error without the file name the step already
// gives: "F: msg" reads "msg", "F is ..." reads "it is ...".
func (e *StepError) causeText() string {
	msg := e.Err.Error()
	for _, f := range []string{e.Step.File, e.Step.Top} {
		if f == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(msg, f+": "); ok {
			return rest
		}
		if rest, ok := strings.CutPrefix(msg, f+" is "); ok {
			return "it is " + rest
		}
	}
	return msg
}

func (e *StepError) Unwrap() error { return e.Err }

// run executes a journal from its first unfinished step, recording each
// step as done, then saves the final metadata and drops the journal.
func (l *Locked) run(j *Journal, ex Executor, before func(op string, index int, s Step)) error {
	if err := l.writeJournal(j); err != nil {
		return err
	}
	for i := range j.Steps {
		if j.Steps[i].Done {
			continue
		}
		if before != nil {
			before(j.Op, i, j.Steps[i])
		}
		if err := ex.Run(j.Steps[i]); err != nil {
			return &StepError{VM: l.VM.Name, Op: j.Op, Snapshot: j.Snapshot, Index: i, Step: j.Steps[i], Err: err}
		}
		j.Steps[i].Done = true
		if err := l.writeJournal(j); err != nil {
			return err
		}
	}
	if c, ok := ex.(interface{ carriedBitmaps() map[string][]string }); ok {
		recordCarried(j.Final.Snapshot(j.Snapshot), c.carriedBitmaps())
	}
	l.VM = j.Final
	if err := l.Save(); err != nil {
		return err
	}
	return l.dropJournal()
}
