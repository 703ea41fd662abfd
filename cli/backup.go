package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/backup"
	"github.com/urfave/cli/v2"
)

// backupCommand is `backup`: create, list, verify, restore and merge the
// points of a backup folder.
func backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "full and incremental backups of a VM's disks into a folder: create, list, verify, restore, merge",
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "back up every disk of the VM as one new point (incremental when it can)", ArgsUsage: "VM",
				Flags: []cli.Flag{stateDirFlag(), storageDaemonFlag(), verboseFlag(),
					&cli.StringFlag{Name: "to", Usage: "backup `DIR` (default: backups/VM in the state directory)"},
					&cli.BoolFlag{Name: "full", Usage: "make a full point even if an incremental one could be made"},
					&cli.Int64Flag{Name: "bandwidth", Usage: "limit each disk's copy to `N` MiB/s (0: unlimited)"},
				},
				Action: runBackupCreate,
			},
			{
				Name: "list", Usage: "list the points of a backup folder, oldest first", ArgsUsage: "DIR",
				Flags: []cli.Flag{outputFlag()}, Action: runBackupList,
			},
			{
				Name: "verify", Usage: "check every file of a backup folder: qchain check, chains, checksums (exit 1 on a problem)", ArgsUsage: "DIR",
				Action: runBackupVerify,
			},
			{
				Name: "restore", Usage: "write a standalone image per disk with a point's content", ArgsUsage: "DIR",
				Flags: []cli.Flag{storageDaemonFlag(),
					&cli.Int64Flag{Name: "point", Usage: "point `N` to restore", Required: true},
					&cli.StringFlag{Name: "to", Usage: "`DEST` folder for the images (TARGET.qcow2 or TARGET.raw)", Required: true},
					&cli.StringFlag{Name: "format", Value: backup.FormatQcow2, Usage: "image format: qcow2 or raw"},
				},
				Action: runBackupRestore,
			},
			{
				Name: "merge", Usage: "fold the oldest points into the oldest point kept", ArgsUsage: "DIR",
				Flags: []cli.Flag{storageDaemonFlag(), verboseFlag(),
					&cli.IntFlag{Name: "keep", Usage: "keep the `N` newest points", Required: true},
				},
				Action: runBackupMerge,
			},
		},
	}
}

// jobProgress is --verbose for backup jobs: one display per disk.
func jobProgress(w io.Writer, what string) func(string, int64, int64) {
	bars := map[string]*progressBar{}
	return func(target string, cur, total int64) {
		bar, ok := bars[target]
		if !ok {
			bar = newProgressBar(w, what+" "+target)
			bars[target] = bar
		}
		if bar == nil {
			return
		}
		bar.Update(cur, total)
		if total > 0 && cur >= total {
			bar.Finish(true)
			bars[target] = nil
		}
	}
}

func runBackupCreate(c *cli.Context) error {
	a, err := args(c, "VM")
	if err != nil {
		return err
	}
	bw, err := bandwidthOf(c)
	if err != nil {
		return err
	}
	m := manager(c)
	dir := c.String("to")
	if dir == "" {
		dir = filepath.Join(m.Store.Dir, "backups", a[0])
	}
	opts := backup.CreateOptions{Full: c.Bool("full"), Speed: bw, StorageDaemon: c.String("storage-daemon"), Notes: c.App.ErrWriter}
	if c.Bool("verbose") {
		opts.Progress = jobProgress(c.App.ErrWriter, "backup")
	}
	p, err := backup.Create(c.Context, m.Store, a[0], dir, opts)
	if err != nil {
		return err
	}
	var bytes, copied int64
	for _, d := range p.Disks {
		bytes += d.Bytes
		copied += d.Copied
	}
	how := "offline"
	if p.Live {
		how = "live"
	}
	fmt.Fprintf(c.App.Writer, "Point %d (%s, %s) of VM %s in %s: %d disks, %s copied, %s written\n",
		p.Point, p.Kind, how, a[0], dir, len(p.Disks), humanize.IBytes(uint64(copied)), humanize.IBytes(uint64(bytes)))
	return nil
}

func runBackupList(c *cli.Context) error {
	a, err := args(c, "DIR")
	if err != nil {
		return err
	}
	asJSON, err := outputJSON(c)
	if err != nil {
		return err
	}
	x, err := backup.ReadIndex(a[0])
	if err != nil {
		return err
	}
	if asJSON {
		points := x.Points
		if points == nil {
			points = []backup.Point{}
		}
		b, err := json.MarshalIndent(struct {
			VM      string         `json:"vm"`
			ID      string         `json:"id"`
			Merging int64          `json:"merging,omitempty"`
			Points  []backup.Point `json:"points"`
		}{x.VM, x.ID, x.Merging, points}, "", "  ")
		if err != nil {
			return err
		}
		_, err = c.App.Writer.Write(append(b, '\n'))
		return err
	}
	fmt.Fprintf(c.App.Writer, "Backups of VM %s\n", x.VM)
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POINT\tTIME\tKIND\tHOW\tDISKS\tCOPIED\tSIZE")
	for _, p := range x.Points {
		var bytes, copied int64
		for _, d := range p.Disks {
			bytes += d.Bytes
			copied += d.Copied
		}
		how := "offline"
		if p.Live {
			how = "live"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", p.Point, p.Time.Format("2006-01-02 15:04:05"), p.Kind, how, len(p.Disks),
			humanize.IBytes(uint64(copied)), humanize.IBytes(uint64(bytes)))
	}
	if x.Merging != 0 {
		fmt.Fprintf(tw, "(a merge into point %d was interrupted: run `qchain backup merge` again)\n", x.Merging)
	}
	return tw.Flush()
}

func runBackupVerify(c *cli.Context) error {
	a, err := args(c, "DIR")
	if err != nil {
		return err
	}
	x, probs, err := backup.Verify(a[0])
	if err != nil {
		return err
	}
	for _, p := range probs {
		fmt.Fprintln(c.App.Writer, p.String())
	}
	files := 0
	for _, p := range x.Points {
		files += len(p.Disks)
	}
	if len(probs) > 0 {
		return exitCode(1, fmt.Errorf("%s: %d problems in %d files of %d points", a[0], len(probs), files, len(x.Points)))
	}
	fmt.Fprintf(c.App.Writer, "%s: %d points, %d files: no problems found\n", a[0], len(x.Points), files)
	return nil
}

func runBackupRestore(c *cli.Context) error {
	a, err := args(c, "DIR")
	if err != nil {
		return err
	}
	files, err := backup.Restore(c.Context, a[0], c.Int64("point"), c.String("to"),
		backup.RestoreOptions{Format: c.String("format"), StorageDaemon: c.String("storage-daemon")})
	for _, f := range files {
		fmt.Fprintf(c.App.Writer, "Restored %s\n", f)
	}
	return err
}

func runBackupMerge(c *cli.Context) error {
	a, err := args(c, "DIR")
	if err != nil {
		return err
	}
	opts := backup.MergeOptions{StorageDaemon: c.String("storage-daemon"), Notes: c.App.ErrWriter}
	if c.Bool("verbose") {
		opts.Progress = jobProgress(c.App.ErrWriter, "merge")
	}
	into, dropped, err := backup.Merge(c.Context, a[0], c.Int("keep"), opts)
	if err != nil {
		return err
	}
	if len(dropped) == 0 {
		fmt.Fprintf(c.App.Writer, "%s: nothing to merge\n", a[0])
		return nil
	}
	var s string
	for i, n := range dropped {
		if i > 0 {
			s += ", "
		}
		s += strconv.FormatInt(n, 10)
	}
	fmt.Fprintf(c.App.Writer, "%s: points %s merged into point %d\n", a[0], s, into)
	return nil
}
