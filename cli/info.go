package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "describe an image (and with --backing-chain every image below it), as qemu-img info",
		ArgsUsage: "IMAGE",
		Flags: append(chainFlags(), outputFlag(),
			&cli.BoolFlag{Name: "backing-chain", Usage: "describe every image of the backing chain"}),
		Action: runInfo,
	}
}

func runInfo(c *cli.Context) error {
	name, asJSON, err := imageAndOutput(c)
	if err != nil {
		return err
	}
	out := qcow2.OutputOptions{Layout: qcow2.LayoutQemu72}
	chain, err := openChain(c, name, !c.Bool("backing-chain"))
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

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
