package cli

import (
	"fmt"
	"io"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "check an image's metadata and refcounts, as qemu-img check (never repairs)",
		ArgsUsage: "IMAGE",
		Description: "Exit status as qemu-img: 0 no errors, 1 the check could not run,\n" +
			"2 the image is corrupted, 3 only leaked clusters were found.\n" +
			"qemu-img 7.2 and 10.0 print checks alike; --compat is accepted for scripts that pass it to all.",
		Flags:  append(chainFlags(), outputFlag(), compatFlag()),
		Action: runCheck,
	}
}

func runCheck(c *cli.Context) error {
	name, asJSON, err := imageAndOutput(c)
	if err != nil {
		return err
	}
	// qemu-img check prints the same in 7.2 and 10.0; the layout is
	// still checked so that a bad value fails alike everywhere.
	if _, err := outputOptions(c); err != nil {
		return err
	}
	chain, err := openChain(c, name, true)
	if err != nil {
		return err
	}
	defer chain.Close()
	f, ok := chain.Top().(*qcow2.File)
	if !ok {
		return exitCode(63, fmt.Errorf("%s: this image format (%s) does not support checks", name, chain.Top().Format()))
	}
	res, err := f.Check()
	if err != nil {
		return exitCode(1, fmt.Errorf("check failed: %w", qcow2.WithFile(name, err)))
	}
	for _, m := range res.Messages {
		fmt.Fprintln(c.App.ErrWriter, m)
	}
	if asJSON {
		if err := writeJSON(c.App.Writer, res); err != nil {
			return err
		}
	} else {
		writeCheckHuman(c.App.Writer, res)
	}
	if code := res.ExitCode(); code != 0 {
		if code == 1 {
			return exitCode(1, fmt.Errorf("%s: check failed", name))
		}
		return exitCode(code, nil)
	}
	return nil
}

// writeCheckHuman prints the result in qemu-img check's layout.
func writeCheckHuman(w io.Writer, r *qcow2.CheckResult) {
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		fmt.Fprintln(w, "No errors were found on the image.")
	} else {
		if r.Corruptions != 0 {
			fmt.Fprintf(w, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		}
		if r.Leaks != 0 {
			fmt.Fprintf(w, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", r.Leaks)
		}
		if r.CheckErrors != 0 {
			fmt.Fprintf(w, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
		}
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		fmt.Fprintf(w, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters,
			float64(r.AllocatedClusters)*100/float64(r.TotalClusters),
			float64(r.FragmentedClusters)*100/float64(r.AllocatedClusters),
			float64(r.CompressedClusters)*100/float64(r.AllocatedClusters))
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(w, "Image end offset: %d\n", r.ImageEndOffset)
	}
}
