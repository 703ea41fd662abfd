package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/qchain/qchain/chain/imagesnap"
	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func imageSnapshotCommand() *cli.Command {
	return &cli.Command{
		Name:      "image-snapshot",
		Usage:     "list, create, apply or delete the internal snapshots of a qcow2 image (qemu-img snapshot)",
		ArgsUsage: "[-l | -c NAME | -a NAME | -d NAME] IMAGE",
		Description: "Exactly one action. -l lists natively and read-only, also on an image in use, in\n" +
			"qemu-img snapshot -l's layout (10.0's; --compat=7.2 for 7.2's); --output=json prints\n" +
			"the entries of qemu-img info --output=json's \"snapshots\" array. -c and -d run on a\n" +
			"private qemu-storage-daemon, -a natively; all three refuse an image another process\n" +
			"holds; -c refuses a name that is empty, longer than 255 bytes or already in use.\n" +
			"As with qemu-img, -a takes an ID or a name (the ID wins), -d a name only.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "l", Aliases: []string{"list"}, Usage: "list the snapshots"},
			&cli.StringFlag{Name: "c", Aliases: []string{"create"}, Usage: "create a snapshot called `NAME`"},
			&cli.StringFlag{Name: "a", Aliases: []string{"apply"}, Usage: "revert the image to the snapshot `ID|NAME` (the snapshot stays)"},
			&cli.StringFlag{Name: "d", Aliases: []string{"delete"}, Usage: "delete the snapshot called `NAME`"},
			outputFlag(),
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "image `FORMAT` (qcow2 or raw); probed when empty"},
			&cli.BoolFlag{Name: "force-share", Aliases: []string{"U"}, Usage: "accepted with -l for qemu-img compatibility: -l never locks or writes"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "accepted for qemu-img compatibility: qchain prints nothing but -l's list and errors"},
			compatFlag(),
			&cli.StringFlag{Name: "storage-daemon", Usage: "qemu-storage-daemon `BINARY` for -c and -d", Value: "qemu-storage-daemon"},
		},
		Action: runImageSnapshot,
	}
}

func runImageSnapshot(c *cli.Context) error {
	var actions []string
	for _, a := range []string{"l", "c", "a", "d"} {
		if c.IsSet(a) {
			actions = append(actions, a)
		}
	}
	switch len(actions) {
	case 0:
		return fmt.Errorf("image-snapshot: one action is needed: -l, -c NAME, -a NAME or -d NAME")
	case 1:
	default:
		return fmt.Errorf("image-snapshot: cannot mix '-l', '-a', '-c', '-d'")
	}
	name, asJSON, err := imageAndOutput(c)
	if err != nil {
		return err
	}
	format := c.String("format")
	switch format {
	case "", "qcow2", "raw":
	default:
		return fmt.Errorf("image-snapshot: unsupported format %q (qcow2 or raw)", format)
	}
	action := actions[0]
	if action == "l" {
		opts, err := outputOptions(c)
		if err != nil {
			return err
		}
		snaps, err := imagesnap.List(name, format)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(c.App.Writer, snaps)
		}
		return qcow2.WriteSnapshotList(c.App.Writer, snaps, opts)
	}
	if c.Bool("force-share") {
		return fmt.Errorf("image-snapshot: -U (force-share) goes only with -l: a snapshot is never written into an image another process uses")
	}
	key := c.String(action)
	if format == "raw" {
		verb := map[string]string{"c": "create", "a": "apply", "d": "delete"}[action]
		return fmt.Errorf("%s: could not %s snapshot '%s': a raw image has no internal snapshots", name, verb, key)
	}
	opts := imagesnap.Options{StorageDaemon: c.String("storage-daemon")}
	// Each action is short and leaves the image consistent only when it
	// ends: a Ctrl-C waits for it (killing qchain would kill the storage
	// daemon, or stop a revert, half-way).
	defer holdSignals(c.App.ErrWriter)()
	switch action {
	case "c":
		return imagesnap.Create(context.Background(), name, key, opts)
	case "d":
		_, err := imagesnap.Delete(context.Background(), name, key, opts)
		return err
	}
	_, err = imagesnap.Apply(name, key)
	return err
}

// holdSignals keeps SIGINT and SIGTERM from ending the process until the
// returned function is called; it notes on w that one came.
func holdSignals(w io.Writer) func() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			fmt.Fprintf(w, "qchain: %v: finishing the snapshot operation first\n", sig)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}
