package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/qchain/qchain/chain"
	"github.com/urfave/cli/v2"
)

// VMShow is the JSON of `vm show`.
type VMShow struct {
	Name string `json:"name"`
	QMP  string `json:"qmp,omitempty"`
	QGA  string `json:"qga,omitempty"`
	// Command is the qemu command line qchain starts the VM with (binary
	// first), absent for a VM started elsewhere.
	Command []string `json:"command,omitempty"`
	NVRAM   string   `json:"nvram,omitempty"`
	// State is "running" or "stopped": whether the qemu qchain started
	// runs, or else whether the QMP socket answers.
	State string `json:"state"`
	// PID and Uptime (seconds) describe the qemu qchain started.
	PID     int        `json:"pid,omitempty"`
	Uptime  int64      `json:"uptime,omitempty"`
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
	show := VMShow{Name: vm.Name, QMP: vm.QMP, QGA: vm.QGA, Command: vm.Command, NVRAM: vm.NVRAM, Current: vm.Current, State: "stopped"}
	m := manager(c)
	proc := m.Store.Process(vm)
	var uptime time.Duration
	switch {
	case proc.Running:
		show.State, show.PID = "running", proc.PID
		uptime = time.Since(proc.Started).Truncate(time.Second)
		show.Uptime = int64(uptime.Seconds())
	case m.Answers(vm):
		show.State = "running"
	}
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
	switch {
	case show.PID != 0:
		fmt.Fprintf(w, "  state: running (pid %d, up %s)\n", show.PID, uptime)
	default:
		fmt.Fprintf(w, "  state: %s\n", show.State)
	}
	if len(vm.Command) > 0 {
		fmt.Fprintf(w, "  command: %s\n", strings.Join(vm.Command, " "))
	}
	if vm.NVRAM != "" {
		fmt.Fprintf(w, "  nvram: %s\n", vm.NVRAM)
	}
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
				Name: "define", Usage: "define a VM; after --, the qemu command line qchain starts it with (disks named by target: -device virtio-blk-pci,drive=TARGET)", ArgsUsage: "VM [-- QEMU-BINARY ARGS...]",
				Flags: []cli.Flag{sd,
					&cli.StringFlag{Name: "nvram", Usage: "the VM's firmware variable store `PATH`"},
					&cli.StringSliceFlag{Name: "disk", Usage: "`TARGET=PATH` of a disk's active image (repeat for each disk); the image becomes the VM's: a snapshot operation removes it once nothing needs it", Required: true},
					&cli.StringFlag{Name: "qmp", Usage: "the VM's QMP `SOCKET` (operations are live while it answers)"},
					&cli.StringFlag{Name: "qga", Usage: "the VM's guest agent `SOCKET` (for --quiesce)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() < 1 {
						return fmt.Errorf("%s: expected VM [-- QEMU-BINARY ARGS...], got no arguments (flags go before them)", c.Command.FullName())
					}
					a := c.Args().Slice()
					if len(a) > 1 && a[1] == "--" {
						a = append(a[:1], a[2:]...)
					}
					vm := &chain.VM{Name: a[0], QMP: c.String("qmp"), QGA: c.String("qga"), NVRAM: c.String("nvram"), Command: a[1:]}
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
				Name: "start", Usage: "start a VM's qemu from its command line, in the background", ArgsUsage: "VM",
				Flags: []cli.Flag{sd, &cli.BoolFlag{Name: "paused", Usage: "start with the vCPUs stopped"}},
				Action: func(c *cli.Context) error {
					a, err := args(c, "VM")
					if err != nil {
						return err
					}
					p, err := manager(c).StartVM(a[0], chain.StartOptions{Paused: c.Bool("paused")})
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "VM %s started (pid %d)\n", a[0], p.PID)
					return nil
				},
			},
			{
				Name: "stop", Usage: "power a VM off (system_powerdown, then quit after --timeout)", ArgsUsage: "VM",
				Flags: []cli.Flag{sd,
					&cli.DurationFlag{Name: "timeout", Value: chain.DefaultStopTimeout, Usage: "how long the guest has to power off before qemu is told to quit"},
					&cli.BoolFlag{Name: "force", Usage: "quit qemu at once"},
				},
				Action: func(c *cli.Context) error {
					a, err := args(c, "VM")
					if err != nil {
						return err
					}
					if err := manager(c).StopVM(a[0], chain.StopOptions{Timeout: c.Duration("timeout"), Force: c.Bool("force")}); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "VM %s stopped\n", a[0])
					return nil
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
