package cli

import (
	"fmt"
	"strings"

	"github.com/qchain/qchain/chain"
	"github.com/urfave/cli/v2"
)

// VMShow is the JSON of `vm show`.
type VMShow struct {
	Name    string     `json:"name"`
	QMP     string     `json:"qmp,omitempty"`
	QGA     string     `json:"qga,omitempty"`
	Current string     `json:"current,omitempty"`
	Disks   []DiskShow `json:"disks"`
	// Unused lists the VM's files (its overlays and original images) that
	// no chain of the VM needs, each with the reason it is still there.
	Unused []chain.KeptFile `json:"unused"`
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
	if show.Unused, err = manager(c).UnusedFiles(vm); err != nil {
		return err
	}
	if show.Unused == nil {
		show.Unused = []chain.KeptFile{}
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
	if len(show.Unused) > 0 {
		fmt.Fprintln(w, "  files of the VM no chain needs:")
		for _, u := range show.Unused {
			fmt.Fprintf(w, "    %s: %s\n", u.File, u.Reason)
		}
	}
	return nil
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

// vmCommand is `vm`: define, list, show and undefine the VMs of the
// state directory.
func vmCommand() *cli.Command {
	sd := stateDirFlag()
	return &cli.Command{
		Name:  "vm",
		Usage: "define VMs (named sets of disks) for the snapshot manager",
		Subcommands: []*cli.Command{
			{
				Name: "define", Usage: "define a VM", ArgsUsage: "VM",
				Flags: []cli.Flag{sd,
					&cli.StringSliceFlag{Name: "disk", Usage: "`TARGET=PATH` of a disk's active image (repeat for each disk); the image becomes the VM's: a snapshot operation removes it once nothing needs it", Required: true},
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
	}
}
