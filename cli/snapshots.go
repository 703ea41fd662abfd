package cli

import "github.com/urfave/cli/v2"

// snapshotCommands are the VM and snapshot manager commands.
func snapshotCommands() []*cli.Command { return nil }
