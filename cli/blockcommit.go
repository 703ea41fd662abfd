package cli

import (
	"context"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/urfave/cli/v2"
)

func blockcommitCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockcommit",
		Usage:     "merge layers of a disk's chain down into a backing file (block-commit)",
		ArgsUsage: "DISK",
		Description: "Commits --top (default: the active layer, which needs --active) into --base (default:\n" +
			"the bottom of the chain; --shallow: the top's own backing file). An active commit ends\n" +
			"with --pivot (the disk switches to the base) or --keep-overlay (it keeps the top);\n" +
			"with neither, --wait returns once the job is ready. --delete removes the committed\n" +
			"files after success. A pivot is refused while a block export can write to the disk\n" +
			"(QEMU loses writes of an export's new clients during the switch); --force pivots anyway.",
		Flags: append(jobFlags(),
			&cli.StringFlag{Name: "top", Usage: "commit from `FILE` (default: the active layer)"},
			&cli.StringFlag{Name: "base", Usage: "commit into `FILE` (default: the bottom of the chain)"},
			&cli.BoolFlag{Name: "active", Usage: "allow committing the active layer"},
			&cli.BoolFlag{Name: "pivot", Usage: "active commit: switch the disk to the base when in sync (implies --wait)"},
			&cli.BoolFlag{Name: "keep-overlay", Usage: "active commit: end in sync but keep the disk on the top (implies --wait)"},
			&cli.BoolFlag{Name: "shallow", Usage: "commit into the top's immediate backing file"},
			&cli.BoolFlag{Name: "delete", Usage: "delete the committed files after success (implies --wait)"},
			forceExportPivotFlag(),
		),
		Action: func(c *cli.Context) error { return runJobCommand(c, 1, "one DISK", planCommit) },
	}
}

func planCommit(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error) {
	return t.PlanCommit(ctx, args[0], blockjob.CommitOptions{
		Top:          c.String("top"),
		Base:         c.String("base"),
		Active:       c.Bool("active"),
		Pivot:        c.Bool("pivot"),
		KeepOverlay:  c.Bool("keep-overlay"),
		Shallow:      c.Bool("shallow"),
		Delete:       c.Bool("delete"),
		ForceExports: c.Bool("force"),
	})
}
