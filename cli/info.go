package cli

import (
	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "describe an image (and with --backing-chain every image below it), as qemu-img info",
		ArgsUsage: "IMAGE",
		Description: compatDescription + "\n" +
			"qchain's own lines, in no qemu-img: \"backing file format: none recorded\" and\n" +
			"\"format probed: yes\" for a backing file whose format nothing recorded, and\n" +
			"\"unsupported features\" for an image qemu-img refuses to open.",
		Flags: append(chainFlags(), outputFlag(), compatFlag(),
			&cli.BoolFlag{Name: "backing-chain", Usage: "describe every image of the backing chain"}),
		Action: runInfo,
	}
}

func runInfo(c *cli.Context) error {
	name, asJSON, err := imageAndOutput(c)
	if err != nil {
		return err
	}
	out, err := outputOptions(c)
	if err != nil {
		return err
	}
	opts := chainOptions(c)
	opts.NoBacking = opts.NoBacking || !c.Bool("backing-chain")
	opts.NoDataFile = true // as qemu-img info: a missing data file is no error
	chain, err := qcow2.OpenChain(name, opts)
	if err != nil {
		return err
	}
	defer chain.Close()
	infos, err := chain.ChainInfo(out)
	if err != nil {
		return err
	}
	w := c.App.Writer
	if asJSON {
		var v any = infos[0]
		if c.Bool("backing-chain") {
			v = infos
		}
		return writeJSON(w, v)
	}
	return qcow2.WriteInfoHuman(w, infos, out)
}
