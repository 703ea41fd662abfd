package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// recoverCommand is `recover`: finish an interrupted snapshot operation.
func recoverCommand() *cli.Command {
	return &cli.Command{
		Name: "recover", Usage: "finish an interrupted snapshot operation of a VM", ArgsUsage: "VM",
		Flags: []cli.Flag{stateDirFlag(), storageDaemonFlag(), verboseFlag()},
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
	}
}
