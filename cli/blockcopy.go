package cli

import (
	"context"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/urfave/cli/v2"
)

func blockcopyCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockcopy",
		Usage:     "copy a disk to a new image and keep it in sync (drive-mirror)",
		ArgsUsage: "DISK DEST",
		Description: "DEST is created with the format of the active layer unless --reuse-external.\n" +
			"--shallow copies only the active layer (DEST gets the same backing file).\n" +
			"When in sync, --pivot switches the disk to DEST and --finish leaves DEST a consistent\n" +
			"copy; with neither, --wait returns once the job is ready. --pivot is refused while a\n" +
			"block export can write to the disk (QEMU loses writes of an export's new clients during\n" +
			"the switch); --force pivots anyway.",
		Flags: append(jobFlags(),
			&cli.BoolFlag{Name: "shallow", Usage: "copy only the active layer; DEST keeps the backing chain"},
			&cli.BoolFlag{Name: "reuse-external", Usage: "DEST exists already (with the right size and backing file): write into it"},
			&cli.BoolFlag{Name: "pivot", Usage: "switch the disk to DEST when in sync (implies --wait)"},
			&cli.BoolFlag{Name: "finish", Usage: "end when in sync, leaving DEST a consistent copy (implies --wait)"},
			forceExportPivotFlag(),
		),
		Action: func(c *cli.Context) error { return runJobCommand(c, 2, "DISK DEST", planCopy) },
	}
}

func planCopy(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error) {
	return t.PlanCopy(ctx, args[0], args[1], blockjob.CopyOptions{
		Shallow:       c.Bool("shallow"),
		ReuseExternal: c.Bool("reuse-external"),
		Pivot:         c.Bool("pivot"),
		Finish:        c.Bool("finish"),
		ForceExports:  c.Bool("force"),
	})
}
