package cli

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

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
			&cli.StringFlag{Name: "compat", EnvVars: []string{"QCHAIN_COMPAT"}, Value: "10.0", Usage: "print -l in the layout of qemu-img `VERSION` (7.2 or 10.0)"},
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
		layout, err := snapshotTableLayout(c.String("compat"))
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
		writeSnapshotList(c.App.Writer, snaps, layout)
		return nil
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

// snapshotLayout picks between the two layouts of qemu-img's snapshot
// table: QEMU 9.0 widened the columns, renamed "VM SIZE" and "VM CLOCK"
// to VM_SIZE and VM_CLOCK, printed four digits of clock hours and "--"
// for a missing instruction count.
type snapshotLayout int

const (
	snapshotLayout72 snapshotLayout = iota // QEMU before 9.0 (7.2 here)
	snapshotLayout90                       // QEMU 9.0 and later (10.0 here)
)

// snapshotTableLayout reads --compat's MAJOR.MINOR.
func snapshotTableLayout(compat string) (snapshotLayout, error) {
	major, minor, ok := strings.Cut(compat, ".")
	mj, err1 := strconv.Atoi(major)
	_, err2 := strconv.Atoi(minor)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("--compat must be a QEMU version such as 7.2 or 10.0, not %q", compat)
	}
	if mj < 9 {
		return snapshotLayout72, nil
	}
	return snapshotLayout90, nil
}

// writeSnapshotList prints the table as `qemu-img snapshot -l` does
// (dump_snapshots and bdrv_snapshot_dump): nothing for no snapshots.
func writeSnapshotList(w io.Writer, snaps []qcow2.SnapshotInfo, layout snapshotLayout) {
	if len(snaps) == 0 {
		return
	}
	fmt.Fprintln(w, "Snapshot list:")
	fmt.Fprintln(w, snapshotRow(nil, layout))
	for i := range snaps {
		fmt.Fprintln(w, snapshotRow(&snaps[i], layout))
	}
}

// snapshotRow is QEMU's bdrv_snapshot_dump: the header for nil, else one
// snapshot. Strings are padded by bytes, as C's printf pads them.
func snapshotRow(s *qcow2.SnapshotInfo, layout snapshotLayout) string {
	var id, tag, size, date, clock, icount string
	if s == nil {
		id, tag, size, date, clock, icount = "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
		if layout == snapshotLayout72 {
			size, clock = "VM SIZE", "VM CLOCK"
		}
	} else {
		id, tag = s.ID, s.Name
		size = qemuSizeToStr(s.VMStateSize)
		date = time.Unix(int64(s.DateSec), 0).Format("2006-01-02 15:04:05")
		secs := s.VMClockSec
		h, m, sec, ms := int32(secs/3600), int32(secs/60%60), int32(secs%60), int32(s.VMClockNsec/1e6%1000)
		if layout == snapshotLayout72 {
			clock = fmt.Sprintf("%02d:%02d:%02d.%03d", h, m, sec, ms)
		} else {
			clock = fmt.Sprintf("%04d:%02d:%02d.%03d", h, m, sec, ms)
		}
		switch {
		case s.Icount != nil:
			icount = strconv.FormatInt(int64(*s.Icount), 10) // PRId64
		case layout == snapshotLayout90:
			icount = "--"
		}
	}
	if s == nil && layout == snapshotLayout72 {
		// "%-10s%-17s%8s%20s%13s%11s"
		return padRight(id, 10) + padRight(tag, 17) + padLeft(size, 8) + padLeft(date, 20) + padLeft(clock, 13) + padLeft(icount, 11)
	}
	if layout == snapshotLayout72 {
		// "%-9s %-16s %8s%20s%13s%11s"
		return padRight(id, 9) + " " + padRight(tag, 16) + " " + padLeft(size, 8) + padLeft(date, 20) + padLeft(clock, 13) + padLeft(icount, 11)
	}
	// "%-7s %-16s %8s %19s %15s %10s", header and rows alike
	return padRight(id, 7) + " " + padRight(tag, 16) + " " + padLeft(size, 8) + " " + padLeft(date, 19) + " " + padLeft(clock, 15) + " " + padLeft(icount, 10)
}

func padRight(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat(" ", n-len(s))
}

func padLeft(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return strings.Repeat(" ", n-len(s)) + s
}

// qemuSizeToStr is QEMU's size_to_str: three significant digits and a
// binary unit, switching to the next unit from 1000 of the current one
// (so 1000 bytes are "0.977 KiB").
func qemuSizeToStr(v uint64) string {
	suffixes := []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	_, exp := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := (exp - 1) / 10 // truncated toward zero, as in C: 0 for v == 0
	return strconv.FormatFloat(float64(v)/float64(uint64(1)<<(10*i)), 'g', 3, 64) + " " + suffixes[i] + "B"
}
