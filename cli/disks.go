package cli

import (
	"fmt"
	"io"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/urfave/cli/v2"
)

func disksCommand() *cli.Command {
	return &cli.Command{
		Name:  "disks",
		Usage: "list the disks of a running QEMU with their backing chains, node names and block jobs",
		Description: "Works for disks added with -drive (named by their id) and with -blockdev (named by\n" +
			"their top node name). Chains are drawn base first: base <- snap1 <- active*.",
		Flags:  []cli.Flag{qmpFlag(), outputFlag()},
		Action: runDisks,
	}
}

// disksReport is the JSON output of disks.
type disksReport struct {
	Disks []diskReport `json:"disks"`
	// OtherJobs are jobs qchain cannot tie to a disk (create jobs, jobs of
	// nodes that are no disk's chain).
	OtherJobs []blockjob.JobStatus `json:"other-jobs,omitempty"`
}

type diskReport struct {
	Name string `json:"name"`
	blockjob.Disk
	Jobs []blockjob.JobStatus `json:"jobs"`
}

func runDisks(c *cli.Context) error {
	if c.NArg() != 0 {
		return fmt.Errorf("disks: expected no arguments, got %d", c.NArg())
	}
	socket := c.String("qmp")
	if socket == "" {
		return fmt.Errorf("disks: --qmp SOCKET is required")
	}
	asJSON, err := outputJSON(c)
	if err != nil {
		return err
	}
	ctx, stop := signalContext(c.Context)
	defer stop()
	t, err := blockjob.Open(ctx, blockjob.TargetOptions{QMP: socket, Notes: c.App.ErrWriter})
	if err != nil {
		return err
	}
	defer t.Close()
	disks, err := t.Disks(ctx)
	if err != nil {
		return err
	}
	jobs, err := t.Jobs(ctx, disks)
	if err != nil {
		return fmt.Errorf("%s: %w", t, err)
	}
	rep := disksReport{Disks: []diskReport{}, OtherJobs: jobs[""]}
	for _, d := range disks {
		js := jobs[d.Name()]
		if js == nil {
			js = []blockjob.JobStatus{}
		}
		rep.Disks = append(rep.Disks, diskReport{Name: d.Name(), Disk: d, Jobs: js})
	}
	if asJSON {
		return writeJSON(c.App.Writer, rep)
	}
	writeDisksHuman(c.App.Writer, rep)
	return nil
}

func writeDisksHuman(w io.Writer, rep disksReport) {
	if len(rep.Disks) == 0 {
		fmt.Fprintln(w, "no disks")
	}
	for i, d := range rep.Disks {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s", d.Name)
		if d.QDev != "" {
			fmt.Fprintf(w, "  qdev %s", d.QDev)
		}
		if d.Device != "" {
			fmt.Fprintf(w, "  node %s", d.NodeName)
		}
		fmt.Fprintf(w, "\n  %s\n", blockjob.ChainLine(d.Chain))
		for depth, l := range d.Chain {
			fmt.Fprintf(w, "    %d  %-6s %-12s %s\n", depth, l.Format, l.NodeName, l.Filename)
		}
		for _, j := range d.Jobs {
			fmt.Fprintf(w, "  job %s\n", j)
		}
	}
	for _, j := range rep.OtherJobs {
		fmt.Fprintf(w, "job %s (no disk)\n", j)
	}
}
