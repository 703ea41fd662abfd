package cli

import (
	"context"

	"github.com/qchain/qchain/chain/blockjob"
	"github.com/urfave/cli/v2"
)

func blockpullCommand() *cli.Command {
	return &cli.Command{
		Name:      "blockpull",
		Usage:     "copy data from backing files into the active layer and drop them from the chain (block-stream)",
		ArgsUsage: "DISK",
		Description: "DISK is a disk of the QEMU at --qmp (device or qdev id, or node name), or without --qmp\n" +
			"an image path: the job then runs offline on a private qemu-storage-daemon.\n" +
			"--base FILE keeps FILE and what is below it; without it the whole chain is pulled.",
		Flags: append(jobFlags(),
			&cli.StringFlag{Name: "base", Usage: "pull only the layers above `FILE`, which becomes the new backing file"}),
		Action: func(c *cli.Context) error { return runJobCommand(c, 1, "one DISK", planPull) },
	}
}

func planPull(ctx context.Context, c *cli.Context, t *blockjob.Target, args []string) (*blockjob.Plan, error) {
	return t.PlanPull(ctx, args[0], blockjob.PullOptions{Base: c.String("base")})
}
