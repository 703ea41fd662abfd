// Command qchain manages QEMU qcow2 disk-image chains and snapshots on
// hosts that run qemu without libvirt.
package main

import (
	"os"

	"github.com/qchain/qchain/cli"
)

func main() {
	os.Exit(cli.Run(os.Args, os.Stdout, os.Stderr))
}
