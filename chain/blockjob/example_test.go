package blockjob_test

import (
	"context"
	"fmt"

	"github.com/qchain/qchain/chain/blockjob"
)

// Commit a running VM's disk into its base and switch the disk to it,
// deleting the committed files.
func Example() {
	ctx := context.Background()
	t, err := blockjob.Open(ctx, blockjob.TargetOptions{QMP: "/run/vm1/qmp.sock"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer t.Close()
	p, err := t.PlanCommit(ctx, "vda", blockjob.CommitOptions{Active: true, Pivot: true, Delete: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	res, err := t.Run(ctx, p, blockjob.RunOptions{Bandwidth: 64 << 20})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s; %s: %s\n", p.Done, p.Label, blockjob.ChainLine(res.Chain))
}
