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
		m.Progress = progressPrinter(c.App.ErrWriter)
	}
	return m
}

// progressPrinter reports data moves on one updating stderr line.
func progressPrinter(w io.Writer) func(chain.Step, int64, int64) {
	var last time.Time
	return func(s chain.Step, cur, total int64) {
		if time.Since(last) < 200*time.Millisecond && cur != total {
			return
		}
		last = time.Now()
		pct := 0.0
		if total > 0 {
			pct = float64(cur) * 100 / float64(total)
		}
		fmt.Fprintf(w, "\r%s: %s / %s (%.0f%%)   ", s.Kind, humanize.IBytes(uint64(cur)), humanize.IBytes(uint64(total)), pct)
		if cur == total {
			fmt.Fprintln(w)
		}
	}
}

func args(c *cli.Context, names ...string) ([]string, error) {
	if c.NArg() != len(names) {
		return nil, fmt.Errorf("%s: expected %s, got %d arguments (flags go before them)", c.Command.FullName(), strings.Join(names, " "), c.NArg())
	}
	return c.Args().Slice(), nil
}

func snapshotCommands() []*cli.Command {
	sd := stateDirFlag()
	daemon := &cli.StringFlag{Name: "storage-daemon", Usage: "qemu-storage-daemon `BINARY` for offline data moves (default: from PATH)"}
	verbose := &cli.BoolFlag{Name: "verbose", Usage: "show the progress of data moves on stderr"}
	return []*cli.Command{
		{
			Name:  "vm",
			Usage: "define VMs (named sets of disks) for the snapshot manager",
			Subcommands: []*cli.Command{
				{
					Name: "define", Usage: "define a VM", ArgsUsage: "VM",
					Flags: []cli.Flag{sd,
						&cli.StringSliceFlag{Name: "disk", Usage: "`TARGET=PATH` of a disk's active image (repeat for each disk)", Required: true},
						&cli.StringFlag{Name: "qmp", Usage: "the VM's QMP `SOCKET` (operations are live while it answers)"},
						&cli.StringFlag{Name: "qga", Usage: "the VM's guest agent `SOCKET` (for --quiesce)"},
					},
					Action: func(c *cli.Context) error {
						a, err := args(c, "VM")
						if err != nil {
							return err
						}
						vm := &chain.VM{Name: a[0], QMP: c.String("qmp"), QGA: c.String("qga")}
						for _, d := range c.StringSlice("disk") {
							t, p, ok := strings.Cut(d, "=")
							if !ok {
								return fmt.Errorf("--disk %q: expected TARGET=PATH", d)
							}
							vm.Disks = append(vm.Disks, chain.Disk{Target: t, Active: p})
						}
						return manager(c).Store.Define(vm)
					},
				},
				{
					Name: "list", Usage: "list the defined VMs", Flags: []cli.Flag{sd, outputFlag()},
					Action: func(c *cli.Context) error {
						asJSON, err := outputJSON(c)
						if err != nil {
							return err
						}
						names, err := manager(c).Store.List()
						if err != nil {
							return err
						}
						if asJSON {
							if names == nil {
								names = []string{}
							}
							return writeJSON(c.App.Writer, names)
						}
						for _, n := range names {
							fmt.Fprintln(c.App.Writer, n)
						}
						return nil
					},
				},
				{
					Name: "show", Usage: "a VM's disks and their chains", ArgsUsage: "VM", Flags: []cli.Flag{sd, outputFlag()},
					Action: runVMShow,
				},
				{
					Name: "undefine", Usage: "forget a VM (its files stay)", ArgsUsage: "VM", Flags: []cli.Flag{sd},
					Action: func(c *cli.Context) error {
						a, err := args(c, "VM")
						if err != nil {
							return err
						}
						return manager(c).Store.Undefine(a[0])
					},
				},
			},
		},
		{
			Name:  "snapshot",
			Usage: "external snapshots of a VM's disks: create, list, info, delete, revert, rotate",
			Subcommands: []*cli.Command{
				{
					Name: "create", Usage: "take a snapshot of every disk (atomically when the VM runs)", ArgsUsage: "VM NAME",
					Flags: []cli.Flag{sd, daemon,
						&cli.StringFlag{Name: "description", Usage: "free `TEXT` kept with the snapshot"},
						&cli.BoolFlag{Name: "quiesce", Usage: "freeze the guest's file systems through its agent while switching"},
					},
					Action: func(c *cli.Context) error {
						a, err := args(c, "VM", "NAME")
						if err != nil {
							return err
						}
						s, err := manager(c).CreateSnapshot(a[0], a[1], c.String("description"), c.Bool("quiesce"))
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
						for _, d := range info.Disks {
							fmt.Fprintf(w, "Disk %s:    %s\n", d.Target, d.File)
						}
						return nil
					},
				},
				{
					Name: "delete", Usage: "forget a point in time, keeping every other snapshot's and the current state's content", ArgsUsage: "VM NAME",
					Flags: []cli.Flag{sd, daemon, verbose, outputFlag(),
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
					Name: "revert", Usage: "make a snapshot's point in time current (a new branch); the VM must be stopped", ArgsUsage: "VM NAME",
					Flags: []cli.Flag{sd, &cli.BoolFlag{Name: "force", Usage: "discard current changes that no snapshot keeps"}},
					Action: func(c *cli.Context) error {
						a, err := args(c, "VM", "NAME")
						if err != nil {
							return err
						}
						if err := manager(c).Revert(a[0], a[1], c.Bool("force")); err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "VM %s reverted to snapshot %s\n", a[0], a[1])
						return nil
					},
				},
				{
					Name: "rotate", Usage: "keep the N newest snapshots of the current branch, delete older ones with merges", ArgsUsage: "VM",
					Flags: []cli.Flag{sd, daemon, verbose, &cli.IntFlag{Name: "keep", Required: true, Usage: "how many snapshots to keep"}, forceExportFlag()},
					Action: func(c *cli.Context) error {
						a, err := args(c, "VM")
						if err != nil {
							return err
						}
						plans, err := manager(c).Rotate(a[0], chain.RotateOptions{Keep: c.Int("keep"), ForceExports: c.Bool("force-export")})
						for _, p := range plans {
							fmt.Fprintf(c.App.Writer, "Deleted snapshot %s (%s copied)\n", p.Snapshot, humanize.IBytes(p.Bytes))
						}
						if err == nil && len(plans) == 0 {
							fmt.Fprintln(c.App.Writer, "Nothing to delete")
						}
						return err
					},
				},
			},
		},
		{
			Name: "recover", Usage: "finish an interrupted snapshot operation of a VM", ArgsUsage: "VM",
			Flags: []cli.Flag{sd, daemon, verbose},
			Action: func(c *cli.Context) error {
				a, err := args(c, "VM")
				if err != nil {
					return err
				}
				j, err := manager(c).Recover(a[0])
				if err != nil {
					return err
				}
				if j == nil {
					fmt.Fprintf(c.App.Writer, "VM %s has no interrupted operation\n", a[0])
					return nil
				}
				fmt.Fprintf(c.App.Writer, "Finished the interrupted %s of snapshot %s\n", j.Op, j.Snapshot)
				return nil
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
}

func snapshotInfo(vm *chain.VM, s *chain.Snapshot) SnapshotInfo {
	ch := vm.Children(s.Name)
	if ch == nil {
		ch = []string{}
	}
	return SnapshotInfo{Name: s.Name, Parent: s.Parent, Children: ch, Current: vm.Current == s.Name, Created: s.Created, Description: s.Description, Disks: s.Disks}
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
	fmt.Fprintln(tw, "NAME\tPARENT\tCREATED\tCURRENT\tDESCRIPTION")
	for _, s := range vm.Snapshots {
		cur := ""
		if s.Name == vm.Current {
			cur = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, dashIfEmpty(s.Parent), s.Created.Format("2006-01-02 15:04:05"), cur, s.Description)
	}
	return tw.Flush()
}

// VMShow is the JSON of `vm show`.
type VMShow struct {
	Name    string     `json:"name"`
	QMP     string     `json:"qmp,omitempty"`
	QGA     string     `json:"qga,omitempty"`
	Current string     `json:"current,omitempty"`
	Disks   []DiskShow `json:"disks"`
}

// DiskShow is one disk in VMShow: its chain from the active image down.
type DiskShow struct {
	Target string   `json:"target"`
	Active string   `json:"active"`
	Chain  []string `json:"chain"`
}

func runVMShow(c *cli.Context) error {
	vm, asJSON, err := loadVMOutput(c)
	if err != nil {
		return err
	}
	show := VMShow{Name: vm.Name, QMP: vm.QMP, QGA: vm.QGA, Current: vm.Current}
	for _, d := range vm.Disks {
		ch, err := chain.ChainFiles(d.Active)
		if err != nil {
			return fmt.Errorf("VM %s disk %s: %w", vm.Name, d.Target, err)
		}
		show.Disks = append(show.Disks, DiskShow{Target: d.Target, Active: d.Active, Chain: ch})
	}
	if asJSON {
		return writeJSON(c.App.Writer, show)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "VM %s", vm.Name)
	if vm.QMP != "" {
		fmt.Fprintf(w, " (QMP %s)", vm.QMP)
	}
	fmt.Fprintln(w)
	for _, d := range show.Disks {
		fmt.Fprintf(w, "  %s: %s\n", d.Target, chain.Tree(d.Chain, d.Active))
	}
	return nil
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
	fmt.Fprintf(w, "  files changed: %s\n  bytes moved: %s\n", dashIfEmpty(strings.Join(p.Changed, ", ")), humanize.IBytes(p.Bytes))
}

// loadVMOutput loads the VM named by the single argument and says whether
// --output asks for JSON.
func loadVMOutput(c *cli.Context) (*chain.VM, bool, error) {
	a, err := args(c, "VM")
	if err != nil {
		return nil, false, err
	}
	asJSON, err := outputJSON(c)
	if err != nil {
		return nil, false, err
	}
	vm, err := manager(c).Store.Load(a[0])
	return vm, asJSON, err
}

// forceExportFlag is snapshot delete's and rotate's --force-export (not
// --force, which revert has with another meaning).
func forceExportFlag() cli.Flag {
	return &cli.BoolFlag{Name: "force-export", Usage: "merge on the running VM's disks even though a block export (NBD, ...) can write to them: QEMU may lose writes its clients make while a job changes the chain"}
}
