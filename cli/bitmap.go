package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/qchain/qchain/chain/bitmap"
	"github.com/qchain/qchain/chain/blockjob"
	"github.com/urfave/cli/v2"
)

func bitmapCommand() *cli.Command {
	// The actions run in the order given, as qemu-img's: each action flag
	// appends to this list as the flag set parses it. NewApp builds the
	// command anew for every run, so the list starts empty.
	var actions []bitmap.Action
	action := func(kind bitmap.ActionKind, usage string) cli.Flag {
		return &actionFlag{kind: kind, usage: usage, actions: &actions}
	}
	return &cli.Command{
		Name:      "bitmap",
		Usage:     "add, remove, clear, enable, disable or merge a persistent dirty bitmap (qemu-img bitmap), or list them",
		ArgsUsage: "IMAGE BITMAP | --list IMAGE",
		Description: "Action flags may be repeated and run in the order given, on the image file offline (through a private\n" +
			"qemu-storage-daemon; the image must not be in use) or, with --qmp SOCKET, on the disk\n" +
			"IMAGE of the running QEMU (its active layer; QEMU stores the bitmap when it closes the\n" +
			"image). A request that would fail changes nothing. --list shows each bitmap's flags\n" +
			"and dirty bytes (read natively offline, asked from QEMU with --qmp).",
		Flags: []cli.Flag{
			action(bitmap.Add, "create BITMAP, recording writes (see -g, --disabled)"),
			action(bitmap.Remove, "remove BITMAP"),
			action(bitmap.Clear, "clear every bit of BITMAP"),
			action(bitmap.Enable, "start recording writes in BITMAP"),
			action(bitmap.Disable, "stop recording writes in BITMAP"),
			action(bitmap.Merge, "set in BITMAP the bits of the bitmap SOURCE (of the image, or of -b)"),
			&cli.GenericFlag{Name: "granularity", Aliases: []string{"g"}, Value: &sizeValue{},
				Usage: "--add: bytes one bit covers, `SIZE` a power of two from 512 to 2G (default: the cluster size, 4k to 64k)"},
			&cli.BoolFlag{Name: "disabled", Usage: "--add: create BITMAP not recording (as --add --disable)"},
			&cli.StringFlag{Name: "source-file", Aliases: []string{"b"}, Usage: "--merge: the SOURCE bitmaps are in `FILE` (live: a disk, a node or a file of the VM)"},
			&cli.StringFlag{Name: "source-format", Aliases: []string{"F"}, Usage: "`FORMAT` of the -b file (only qcow2 holds bitmaps)"},
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "`FORMAT` of IMAGE (only qcow2 holds bitmaps); probed when empty"},
			&cli.BoolFlag{Name: "list", Aliases: []string{"l"}, Usage: "list the bitmaps of IMAGE with their flags and dirty bytes"},
			outputFlag(),
			&cli.StringFlag{Name: "qmp", Usage: "QMP monitor `SOCKET` of the running QEMU; IMAGE is then one of its disks"},
			&cli.StringFlag{Name: "storage-daemon", Usage: "qemu-storage-daemon `BINARY` for offline actions", Value: blockjob.DefaultStorageDaemon},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("list") {
				return runBitmapList(c, actions)
			}
			return runBitmap(c, actions)
		},
	}
}

func runBitmap(c *cli.Context, actions []bitmap.Action) error {
	if c.NArg() != 2 {
		return fmt.Errorf("bitmap: expected IMAGE and BITMAP, got %d arguments (flags go before them)", c.NArg())
	}
	image, name := c.Args().Get(0), c.Args().Get(1)
	if f := c.String("format"); f != "" && f != "qcow2" {
		return fmt.Errorf("%s: -f %s: persistent bitmaps are stored only in qcow2 images", image, f)
	}
	if c.IsSet("output") {
		return fmt.Errorf("bitmap: --output applies only to --list")
	}
	g, _ := sizeOf(c, "granularity") // 0 is the default, as in qemu-img
	req := bitmap.Request{
		Bitmap:       name,
		Actions:      actions,
		Granularity:  g,
		Disabled:     c.Bool("disabled"),
		SourceFile:   c.String("source-file"),
		SourceFormat: c.String("source-format"),
	}
	ctx, stop := signalContext(c.Context)
	defer stop()
	_, err := bitmap.Apply(ctx, image, req, bitmap.Options{
		QMP:           c.String("qmp"),
		StorageDaemon: c.String("storage-daemon"),
		Notes:         c.App.ErrWriter,
	})
	return err
}

func runBitmapList(c *cli.Context, actions []bitmap.Action) error {
	if len(actions) > 0 {
		return fmt.Errorf("bitmap: --list takes no action flags")
	}
	image, asJSON, err := imageAndOutput(c)
	if err != nil {
		return err
	}
	ctx, stop := signalContext(c.Context)
	defer stop()
	infos, err := bitmap.List(ctx, image, bitmap.Options{QMP: c.String("qmp"), Notes: c.App.ErrWriter})
	if err != nil {
		return err
	}
	w := c.App.Writer
	if asJSON {
		b, err := json.MarshalIndent(infos, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	if len(infos) == 0 {
		fmt.Fprintf(w, "%s has no persistent bitmaps\n", image)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGRANULARITY\tFLAGS\tDIRTY")
	for _, in := range infos {
		flags := strings.Join(in.Flags, ",")
		if flags == "" {
			flags = "-"
		}
		dirty := "unknown"
		switch {
		case in.Count != nil:
			dirty = fmt.Sprintf("%d bytes", *in.Count)
		case in.Inconsistent():
			dirty = "unknown (inconsistent)"
		default:
			dirty = "unknown (in use: ask the VM with --qmp)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", in.Name, in.Granularity, flags, dirty)
	}
	return tw.Flush()
}

// actionFlag is one of bitmap's action flags (--add, --merge SOURCE, ...):
// each occurrence appends its action to a list, so that the actions keep
// the order of the command line, which urfave/cli's own flags lose.
type actionFlag struct {
	kind    bitmap.ActionKind
	usage   string
	actions *[]bitmap.Action
	set     bool
}

func (f *actionFlag) Apply(set *flag.FlagSet) error {
	set.Var(&actionValue{f}, string(f.kind), f.usage)
	return nil
}

func (f *actionFlag) Names() []string { return []string{string(f.kind)} }
func (f *actionFlag) IsSet() bool     { return f.set }
func (f *actionFlag) IsVisible() bool { return true }

func (f *actionFlag) String() string {
	name := "--" + string(f.kind)
	if f.kind == bitmap.Merge {
		name += " SOURCE"
	}
	return fmt.Sprintf("%s\t%s", name, f.usage)
}

// actionValue is the flag.Value of an actionFlag; it is a boolean flag
// except for --merge, which takes the source bitmap's name.
type actionValue struct{ f *actionFlag }

func (v *actionValue) String() string { return "" }

func (v *actionValue) IsBoolFlag() bool { return v.f.kind != bitmap.Merge }

func (v *actionValue) Set(s string) error {
	a := bitmap.Action{Kind: v.f.kind}
	switch {
	case v.f.kind == bitmap.Merge:
		a.Source = s
	case s == "false":
		return nil
	case s != "true":
		return fmt.Errorf("--%s takes no value", v.f.kind)
	}
	*v.f.actions = append(*v.f.actions, a)
	v.f.set = true
	return nil
}
