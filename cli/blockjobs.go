package cli

import "github.com/urfave/cli/v2"

// blockCommands are the virsh-like block job commands (disks, blockpull,
// blockcommit, blockcopy, blockjob).
func blockCommands() []*cli.Command { return nil }
