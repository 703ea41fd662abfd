package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/chain"
	"github.com/urfave/cli/v2"
)

func stateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Usage: "state directory (default $QCHAIN_STATE_DIR, /var/lib/qchain for root, $XDG_STATE_HOME/qchain otherwise)"}
}

func manager(c *cli.Context) *chain.Manager {
	dir := c.String("state-dir")
	if dir == "" {
		dir = chain.DefaultStateDir()
	}
	m := &chain.Manager{Store: &chain.Store{Dir: dir}, Ctx: c.Context, StorageDaemon: c.String("storage-daemon")}
	if c.Bool("verbose") {
		m.Progress = stepProgress(c.App.ErrWriter)
	}
	return m
}

func args(c *cli.Context, names ...string) ([]string, error) {
	if c.NArg() != len(names) {
		return nil, fmt.Errorf("%s: expected %s, got %d arguments (flags go before them)", c.Command.FullName(), strings.Join(names, " "), c.NArg())
	}
	return c.Args().Slice(), nil
}

// snapshotCommands are the snapshot manager's commands.
func snapshotCommands() []*cli.Command {
	return []*cli.Command{vmCommand(), snapshotCommand(), recoverCommand()}
}

func storageDaemonFlag() cli.Flag {
	return &cli.StringFlag{Name: "storage-daemon", Usage: "qemu-storage-daemon `BINARY` for offline data moves (default: from PATH)"}
}

func verboseFlag() cli.Flag {
	return &cli.BoolFlag{Name: "verbose", Usage: "show the progress of data moves on stderr"}
}

// snapshotCommand is `snapshot`: create, list, info, delete, revert and
// rotate a VM's snapshots.
func snapshotCommand() *cli.Command {
	sd := stateDirFlag()
	return &cli.Command{
		Name:  "snapshot",
		Usage: "snapshots of a VM's disks (external overlays, or internal with --internal): create, list, info, delete, revert, rotate",
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "take a snapshot of every disk (atomically when the VM runs)", ArgsUsage: "VM NAME",
				Flags: []cli.Flag{sd, storageDaemonFlag(),
					&cli.StringFlag{Name: "description", Usage: "free `TEXT` kept with the snapshot"},
					&cli.BoolFlag{Name: "quiesce", Usage: "freeze the guest's file systems through its agent while switching"},
					&cli.BoolFlag{Name: "memory", Usage: "a checkpoint of the running VM: its RAM and device state (in a file beside the disks) with every disk, from one instant"},
					&cli.BoolFlag{Name: "live", Usage: "with --memory: copy the RAM while the guest runs; only the last part stops it"},
					&cli.BoolFlag{Name: "internal", Usage: "keep the snapshot inside the qcow2 images, no overlay: alone, every disk's state from one instant (a running VM's in one QMP transaction, a stopped one's offline); with --memory, the RAM and device state too (QMP snapshot-save, QEMU 6.0+)"},
				},
				Action: func(c *cli.Context) error {
					a, err := args(c, "VM", "NAME")
					if err != nil {
						return err
					}
					if c.Bool("internal") && !c.Bool("memory") {
						if c.Bool("live") {
							return fmt.Errorf("--live means nothing for a disk-only internal snapshot: a running VM takes it in one transaction while the guest runs")
						}
						// As below: with --quiesce a killed qchain would
						// leave the guest's file systems frozen.
						ctx, stop := signalContext(c.Context)
						defer stop()
						m := manager(c)
						m.Ctx = ctx
						s, err := m.CreateInternalSnapshot(a[0], a[1], c.String("description"), c.Bool("quiesce"))
						if err != nil && ctx.Err() != nil {
							return exitCode(exitInterrupted, fmt.Errorf("interrupted: %w", err))
						}
						if err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "Internal snapshot %s created (inside %d disk image(s), no overlay)\n", s.Name, len(s.Disks))
						return nil
					}
					if c.Bool("live") && !c.Bool("memory") {
						return fmt.Errorf("--live needs --memory")
					}
					if c.Bool("memory") {
						if c.Bool("quiesce") {
							return fmt.Errorf("--quiesce and --memory exclude each other: a checkpoint with memory needs no frozen file systems")
						}
						create, kind := manager(c).CreateCheckpoint, "Checkpoint"
						if c.Bool("internal") {
							create, kind = manager(c).CreateInternalCheckpoint, "Internal checkpoint"
						}
						s, err := create(a[0], a[1], chain.CheckpointOptions{Description: c.String("description"), Live: c.Bool("live")})
						if err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "%s %s created (memory in %s)\n", kind, s.Name, s.Memory.File)
						return nil
					}
					// SIGINT and SIGTERM cancel the create instead of
					// killing qchain: with --quiesce a killed qchain
					// would leave the guest's file systems frozen.
					ctx, stop := signalContext(c.Context)
					defer stop()
					m := manager(c)
					m.Ctx = ctx
					s, err := m.CreateSnapshot(a[0], a[1], c.String("description"), c.Bool("quiesce"))
					if err != nil && ctx.Err() != nil {
						return exitCode(exitInterrupted, fmt.Errorf("interrupted: %w", err))
					}
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "Snapshot %s created\n", s.Name)
					return nil
				},
			},
			{
				Name: "list", Usage: "list a VM's snapshots", ArgsUsage: "VM",
				Flags:  []cli.Flag{sd, outputFlag(), &cli.BoolFlag{Name: "tree", Usage: "draw the snapshot tree"}},
				Action: runSnapshotList,
			},
			{
				Name: "info", Usage: "one snapshot: parent, children, files", ArgsUsage: "VM NAME",
				Flags: []cli.Flag{sd, outputFlag()},
				Action: func(c *cli.Context) error {
					a, err := args(c, "VM", "NAME")
					if err != nil {
						return err
					}
					asJSON, err := outputJSON(c)
					if err != nil {
						return err
					}
					vm, err := manager(c).Store.Load(a[0])
					if err != nil {
						return err
					}
					s := vm.Snapshot(a[1])
					if s == nil {
						return fmt.Errorf("VM %s has no snapshot %s", vm.Name, a[1])
					}
					info := snapshotInfo(vm, s)
					if asJSON {
						return writeJSON(c.App.Writer, info)
					}
					w := c.App.Writer
					fmt.Fprintf(w, "Name:        %s\nParent:      %s\nChildren:    %s\nCurrent:     %t\nCreated:     %s\nDescription: %s\n",
						info.Name, dashIfEmpty(info.Parent), dashIfEmpty(strings.Join(info.Children, ", ")), info.Current, info.Created.Format(time.RFC3339), info.Description)
					fmt.Fprintf(w, "Kind:        %s\n", info.Kind())
					if info.Memory {
						fmt.Fprintf(w, "Memory:      %s (%s)\n", info.MemoryFile, info.MemoryFormat)
						if info.NVRAM != "" {
							fmt.Fprintf(w, "NVRAM:       %s\n", info.NVRAM)
						}
					}
					for _, d := range info.Disks {
						fmt.Fprintf(w, "Disk %s:    %s\n", d.Target, d.File)
					}
					return nil
				},
			},
			{
				Name: "delete", Usage: "forget a point in time, keeping every other snapshot's and the current state's content", ArgsUsage: "VM NAME",
				Flags: []cli.Flag{sd, storageDaemonFlag(), verboseFlag(), outputFlag(),
					&cli.BoolFlag{Name: "children", Usage: "delete the snapshot's whole subtree and its files"},
					&cli.BoolFlag{Name: "metadata", Usage: "forget the snapshot, touch no file"},
					&cli.StringFlag{Name: "merge", Value: "auto", Usage: "auto (copy fewer bytes), commit or pull"},
					&cli.BoolFlag{Name: "dry-run", Usage: "print the plan, change nothing"},
					forceExportFlag(),
				},
				Action: func(c *cli.Context) error {
					a, err := args(c, "VM", "NAME")
					if err != nil {
						return err
					}
					asJSON, err := outputJSON(c)
					if err != nil {
						return err
					}
					if c.Bool("children") && c.Bool("metadata") {
						return fmt.Errorf("--children and --metadata exclude each other")
					}
					p, err := manager(c).Delete(a[0], a[1], chain.DeleteOptions{Merge: c.String("merge"), Children: c.Bool("children"), MetadataOnly: c.Bool("metadata"), ForceExports: c.Bool("force-export")}, c.Bool("dry-run"))
					if err != nil {
						return err
					}
					if asJSON {
						return writeJSON(c.App.Writer, p)
					}
					writePlan(c.App.Writer, p, c.Bool("dry-run"))
					return nil
				},
			},
			{
				Name: "revert", Usage: "make a snapshot's point in time current (a new branch; an internal snapshot's images go back to it); the VM must be stopped, except for a checkpoint with memory: the VM then runs on from that instant", ArgsUsage: "VM NAME",
				Flags: []cli.Flag{sd, outputFlag(), &cli.BoolFlag{Name: "force", Usage: "discard current changes that no snapshot keeps"},
					&cli.BoolFlag{Name: "paused", Usage: "a checkpoint with memory: leave the VM paused at the checkpoint's instant"}},
				Action: func(c *cli.Context) error {
					a, err := args(c, "VM", "NAME")
					if err != nil {
						return err
					}
					asJSON, err := outputJSON(c)
					if err != nil {
						return err
					}
					p, err := manager(c).RevertWith(a[0], a[1], chain.RevertOptions{Force: c.Bool("force"), Paused: c.Bool("paused")})
					if err != nil {
						return err
					}
					if asJSON {
						return writeJSON(c.App.Writer, p)
					}
					fmt.Fprintf(c.App.Writer, "VM %s reverted to snapshot %s\n", a[0], a[1])
					writeFileFates(c.App.Writer, p, true)
					return nil
				},
			},
			{
				Name: "rotate", Usage: "keep the N newest snapshots of the current branch, delete older ones with merges", ArgsUsage: "VM",
				Flags: []cli.Flag{sd, storageDaemonFlag(), verboseFlag(), outputFlag(), &cli.IntFlag{Name: "keep", Required: true, Usage: "how many snapshots to keep"}, forceExportFlag()},
				Action: func(c *cli.Context) error {
					a, err := args(c, "VM")
					if err != nil {
						return err
					}
					asJSON, err := outputJSON(c)
					if err != nil {
						return err
					}
					plans, err := manager(c).Rotate(a[0], chain.RotateOptions{Keep: c.Int("keep"), ForceExports: c.Bool("force-export")})
					if asJSON {
						if plans == nil {
							plans = []*chain.Plan{}
						}
						if werr := writeJSON(c.App.Writer, plans); werr != nil {
							return werr
						}
						return err
					}
					for _, p := range plans {
						fmt.Fprintf(c.App.Writer, "Deleted snapshot %s (%s copied)\n", p.Snapshot, humanize.IBytes(p.Bytes))
						writeFileFates(c.App.Writer, p, true)
					}
					if err == nil && len(plans) == 0 {
						fmt.Fprintln(c.App.Writer, "Nothing to delete")
					}
					return err
				},
			},
		},
	}
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// SnapshotInfo is the JSON of `snapshot info` and of each `snapshot list`
// entry.
type SnapshotInfo struct {
	Name        string               `json:"name"`
	Parent      string               `json:"parent"`
	Children    []string             `json:"children"`
	Current     bool                 `json:"current"`
	Created     time.Time            `json:"created"`
	Description string               `json:"description,omitempty"`
	Disks       []chain.SnapshotDisk `json:"disks"`
	// Memory says whether the snapshot is a checkpoint with the VM's RAM
	// and device state (in MemoryFile); Internal whether it lives inside
	// the images (its memory then inside MemoryFile, the first disk's).
	Memory     bool   `json:"memory"`
	Internal   bool   `json:"internal"`
	MemoryFile string `json:"memory_file,omitempty"`
	// MemoryFormat is how QEMU wrote MemoryFile: "stream" or "mapped-ram".
	MemoryFormat string `json:"memory_format,omitempty"`
	// NVRAM is the checkpoint's copy of the VM's firmware variable store.
	NVRAM string `json:"nvram,omitempty"`
}

// Kind is "memory" for a checkpoint with memory, "disk" for a disk-only
// snapshot, each prefixed "internal-" when it lives inside the images
// ("internal" alone for a disk-only internal snapshot).
func (s SnapshotInfo) Kind() string {
	if s.Internal && s.Memory {
		return "internal-memory"
	}
	if s.Internal {
		return "internal"
	}
	if s.Memory {
		return "memory"
	}
	return "disk"
}

func snapshotInfo(vm *chain.VM, s *chain.Snapshot) SnapshotInfo {
	ch := vm.Children(s.Name)
	if ch == nil {
		ch = []string{}
	}
	info := SnapshotInfo{Name: s.Name, Parent: s.Parent, Children: ch, Current: vm.Current == s.Name, Created: s.Created, Description: s.Description, Disks: s.Disks}
	info.Internal = s.Internal
	if s.Memory != nil {
		info.Memory, info.MemoryFile, info.MemoryFormat, info.NVRAM = true, s.Memory.File, s.Memory.Format, s.Memory.NVRAM
	}
	return info
}

func runSnapshotList(c *cli.Context) error {
	vm, asJSON, err := loadVMOutput(c)
	if err != nil {
		return err
	}
	if asJSON {
		out := []SnapshotInfo{}
		for _, s := range vm.Snapshots {
			out = append(out, snapshotInfo(vm, s))
		}
		return writeJSON(c.App.Writer, out)
	}
	w := c.App.Writer
	if c.Bool("tree") {
		var draw func(name, indent string)
		draw = func(name, indent string) {
			for _, ch := range vm.Children(name) {
				mark := ""
				if ch == vm.Current {
					mark = "  (current)"
				}
				fmt.Fprintf(w, "%s%s%s\n", indent, ch, mark)
				draw(ch, indent+"  ")
			}
		}
		draw("", "")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPARENT\tCREATED\tKIND\tCURRENT\tDESCRIPTION")
	for _, s := range vm.Snapshots {
		cur := ""
		if s.Name == vm.Current {
			cur = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, dashIfEmpty(s.Parent), s.Created.Format("2006-01-02 15:04:05"), snapshotInfo(vm, s).Kind(), cur, s.Description)
	}
	return tw.Flush()
}

func writePlan(w io.Writer, p *chain.Plan, dry bool) {
	verb := "Deleted"
	if dry {
		verb = "Plan to delete"
	}
	fmt.Fprintf(w, "%s snapshot %s of VM %s\n", verb, p.Snapshot, p.VM)
	for i, s := range p.Steps {
		fmt.Fprintf(w, "  %d. %s\n", i+1, s)
		if s.Why != "" {
			fmt.Fprintf(w, "     why: %s\n", s.Why)
		}
	}
	if len(p.Steps) == 0 {
		fmt.Fprintln(w, "  (no file changes)")
	}
	targets := make([]string, 0, len(p.Before))
	for t := range p.Before {
		targets = append(targets, t)
	}
	sort.Strings(targets)
	for _, t := range targets {
		fmt.Fprintf(w, "  %s before: %s\n  %s after:  %s\n", t, p.Before[t], t, p.After[t])
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	writeFileFates(w, p, false)
	fmt.Fprintf(w, "  files changed: %s\n  bytes moved: %s\n", dashIfEmpty(strings.Join(p.Changed, ", ")), humanize.IBytes(p.Bytes))
}

// writeFileFates names the VM's files the plan left unused by its chains:
// the ones it removes (with removed; delete lists them among its steps)
// and the ones it keeps, with the reason.
func writeFileFates(w io.Writer, p *chain.Plan, removed bool) {
	if removed {
		for _, s := range p.Steps {
			if s.Kind == chain.StepRemove {
				fmt.Fprintf(w, "  removed %s (%s)\n", s.File, s.Why)
			}
		}
	}
	for _, k := range p.Kept {
		fmt.Fprintf(w, "  kept %s: %s\n", k.File, k.Reason)
	}
}

// forceExportFlag is snapshot delete's and rotate's --force-export (not
// --force, which revert has with another meaning).
func forceExportFlag() cli.Flag {
	return &cli.BoolFlag{Name: "force-export", Usage: "merge on the running VM's disks even though a block export (NBD, ...) can write to them: QEMU may lose writes its clients make while a job changes the chain"}
}
