package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/dustin/go-humanize"
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
	chain, err := openChain(c, name, !c.Bool("backing-chain"))
	if err != nil {
		return err
	}
	defer chain.Close()
	infos, err := chain.ChainInfo()
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
	for i, info := range infos {
		if i > 0 {
			fmt.Fprintln(w)
		}
		writeInfoHuman(w, info)
	}
	return nil
}

// writeInfoHuman prints an image description in qemu-img info's layout.
func writeInfoHuman(w io.Writer, info *qcow2.ImageInfo) {
	disk := "unavailable"
	if info.ActualSize != nil {
		disk = humanize.IBytes(uint64(*info.ActualSize))
	}
	fmt.Fprintf(w, "image: %s\nfile format: %s\nvirtual size: %s (%d bytes)\ndisk size: %s\n",
		info.Filename, info.Format, humanize.IBytes(info.VirtualSize), info.VirtualSize, disk)
	if info.BackingFormatProbed {
		fmt.Fprintf(w, "format probed: yes (the overlay records no backing format; %s was detected from the file's content)\n", info.Format)
	}
	if info.Encrypted != nil && *info.Encrypted {
		fmt.Fprintln(w, "encrypted: yes")
	}
	if info.ClusterSize != nil {
		fmt.Fprintf(w, "cluster_size: %d\n", *info.ClusterSize)
	}
	if info.DirtyFlag != nil && *info.DirtyFlag {
		fmt.Fprintln(w, "cleanly shut down: no")
	}
	if info.UnsupportedFeatures != "" {
		fmt.Fprintf(w, "unsupported features: %s (data cannot be read)\n", info.UnsupportedFeatures)
	}
	if info.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s", info.BackingFilename)
		if info.FullBackingFilename != info.BackingFilename {
			fmt.Fprintf(w, " (actual path: %s)", info.FullBackingFilename)
		}
		fmt.Fprintln(w)
		if info.BackingFilenameFormat != "" {
			fmt.Fprintf(w, "backing file format: %s\n", info.BackingFilenameFormat)
		} else {
			fmt.Fprintln(w, "backing file format: none recorded (will be probed)")
		}
	}
	if len(info.Snapshots) > 0 {
		fmt.Fprintln(w, "Snapshot list:")
		fmt.Fprintf(w, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
		for _, s := range info.Snapshots {
			date := time.Unix(int64(s.DateSec), 0).Format("2006-01-02 15:04:05")
			clock := fmt.Sprintf("%02d:%02d:%02d.%03d", s.VMClockSec/3600, s.VMClockSec/60%60, s.VMClockSec%60, s.VMClockNsec/1e6)
			icount := ""
			if s.Icount != nil {
				icount = fmt.Sprint(*s.Icount)
			}
			fmt.Fprintf(w, "%-9s %-16s %8s%20s%13s%11s\n", s.ID, s.Name, humanize.IBytes(s.VMStateSize), date, clock, icount)
		}
	}
	if fs := info.FormatSpecific; fs != nil && fs.Data != nil {
		d := fs.Data
		fmt.Fprintln(w, "Format specific information:")
		fmt.Fprintf(w, "    compat: %s\n    compression type: %s\n", d.Compat, d.CompressionType)
		if d.LazyRefcounts != nil {
			fmt.Fprintf(w, "    lazy refcounts: %t\n", *d.LazyRefcounts)
		}
		if len(d.Bitmaps) > 0 {
			fmt.Fprintln(w, "    bitmaps:")
			for i, b := range d.Bitmaps {
				fmt.Fprintf(w, "        [%d]:\n            flags:\n", i)
				for j, f := range b.Flags {
					fmt.Fprintf(w, "                [%d]: %s\n", j, f)
				}
				fmt.Fprintf(w, "            name: %s\n            granularity: %d\n", b.Name, b.Granularity)
			}
		}
		fmt.Fprintf(w, "    refcount bits: %d\n", d.RefcountBits)
		if d.Encrypt != nil {
			fmt.Fprintf(w, "    encrypt:\n        format: %s\n", d.Encrypt.Format)
		}
		if d.Corrupt != nil {
			fmt.Fprintf(w, "    corrupt: %t\n", *d.Corrupt)
		}
		if d.DataFile != nil {
			fmt.Fprintf(w, "    data file: %s\n", *d.DataFile)
		}
		if d.DataFileRaw != nil {
			fmt.Fprintf(w, "    data file raw: %t\n", *d.DataFileRaw)
		}
		if d.ExtendedL2 != nil {
			fmt.Fprintf(w, "    extended l2: %t\n", *d.ExtendedL2)
		}
	}
}
