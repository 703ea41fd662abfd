package qcow2

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// WriteInfoHuman writes infos (ChainInfo's result: one image, or a chain
// top first) as `qemu-img info` of opts.Layout prints them, images
// separated by an empty line.
//
// Three lines are qchain's own, in no qemu-img release: "format probed:
// yes (...)" under a backing file whose format nothing recorded, "backing
// file format: none recorded (will be probed)" above it, and
// "unsupported features: ..." for images qemu-img refuses to open.
func WriteInfoHuman(w io.Writer, infos []*ImageInfo, opts OutputOptions) error {
	bw := bufio.NewWriter(w)
	for i, info := range infos {
		if i > 0 {
			bw.WriteString("\n")
		}
		if err := writeImageHuman(bw, info, opts.Layout); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// writeImageHuman prints one image as qemu-img's dump_human_image_info
// (bdrv_image_info_dump in 7.2), then its child nodes in 10.0's layout.
func writeImageHuman(w *bufio.Writer, info *ImageInfo, layout Layout) error {
	writeNodeHeader(w, "", false, info.Filename, info.Format, info.VirtualSize, info.ActualSize)
	if info.BackingFormatProbed {
		fmt.Fprintf(w, "format probed: yes (the overlay records no backing format; %s was detected from the file's content)\n", info.Format)
	}
	if info.Encrypted != nil && *info.Encrypted {
		w.WriteString("encrypted: yes\n")
	}
	if info.ClusterSize != nil {
		fmt.Fprintf(w, "cluster_size: %d\n", *info.ClusterSize)
	}
	if info.DirtyFlag != nil && *info.DirtyFlag {
		w.WriteString("cleanly shut down: no\n")
	}
	if info.UnsupportedFeatures != "" {
		fmt.Fprintf(w, "unsupported features: %s (data cannot be read)\n", info.UnsupportedFeatures)
	}
	if info.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s", info.BackingFilename)
		if info.FullBackingFilename != info.BackingFilename {
			fmt.Fprintf(w, " (actual path: %s)", info.FullBackingFilename)
		}
		w.WriteString("\n")
		if info.BackingFilenameFormat != "" {
			fmt.Fprintf(w, "backing file format: %s\n", info.BackingFilenameFormat)
		} else {
			w.WriteString("backing file format: none recorded (will be probed)\n")
		}
	}
	if len(info.Snapshots) > 0 {
		w.WriteString("Snapshot list:\n")
		writeSnapshotTable(w, info.Snapshots, layout)
	}
	if fs := info.FormatSpecific; fs != nil && fs.Data != nil {
		if err := writeSpecificHuman(w, 0, fs.Data); err != nil {
			return err
		}
	}
	for _, c := range info.Children {
		// qemu-img names a child by its path from the root node, "/file".
		fmt.Fprintf(w, "Child node '/%s':\n", c.Name)
		p := c.Info
		if p == nil {
			continue
		}
		writeNodeHeader(w, "    ", true, p.Filename, p.Format, p.VirtualSize, p.ActualSize)
		if err := writeSpecificHuman(w, 1, p.FormatSpecific.Data); err != nil {
			return err
		}
	}
	return nil
}

// writeNodeHeader prints the first four lines of bdrv_node_info_dump. A
// protocol node (a child without children of its own, the host file) has
// a filename, a protocol type and a file length instead of an image, a
// file format and a virtual size.
func writeNodeHeader(w *bufio.Writer, indent string, protocol bool, name, format string, size uint64, actual *int64) {
	disk := "unavailable"
	if actual != nil {
		disk = sizeToStr(uint64(*actual))
	}
	image, ftype, length := "image", "file format", "virtual size"
	if protocol {
		image, ftype, length = "filename", "protocol type", "file length"
	}
	fmt.Fprintf(w, "%s%s: %s\n%s%s: %s\n%s%s: %s (%d bytes)\n%sdisk size: %s\n",
		indent, image, name, indent, ftype, format, indent, length, sizeToStr(size), size, indent, disk)
}

// WriteSnapshotList prints an image's internal snapshots as `qemu-img
// snapshot -l` of the layout's release does: "Snapshot list:" and the
// table, nothing at all when there are none.
func WriteSnapshotList(w io.Writer, snaps []SnapshotInfo, opts OutputOptions) error {
	if len(snaps) == 0 {
		return nil
	}
	bw := bufio.NewWriter(w)
	bw.WriteString("Snapshot list:\n")
	writeSnapshotTable(bw, snaps, opts.Layout)
	return bw.Flush()
}

// writeSnapshotTable prints the snapshot list as bdrv_snapshot_dump of
// the layout's release: 10.0 widened the clock, renamed two columns and
// prints "--" for a snapshot without an instruction count. Strings are
// padded by bytes, as C's printf pads them (fmt pads by runes).
func writeSnapshotTable(w *bufio.Writer, snaps []SnapshotInfo, layout Layout) {
	w.WriteString(snapshotRow(nil, layout))
	w.WriteByte('\n')
	for i := range snaps {
		w.WriteString(snapshotRow(&snaps[i], layout))
		w.WriteByte('\n')
	}
}

// snapshotRow is QEMU's bdrv_snapshot_dump: the header for nil, else one
// snapshot.
func snapshotRow(s *SnapshotInfo, layout Layout) string {
	var id, tag, size, date, clock, icount string
	if s == nil {
		id, tag, size, date, clock, icount = "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
		if layout == LayoutQemu72 {
			size, clock = "VM SIZE", "VM CLOCK"
		}
	} else {
		id, tag = s.ID, s.Name
		size = sizeToStr(s.VMStateSize)
		date = time.Unix(int64(s.DateSec), 0).Format("2006-01-02 15:04:05")
		secs := s.VMClockSec
		h, m, sec, ms := int32(secs/3600), int32(secs/60%60), int32(secs%60), int32(s.VMClockNsec/1e6%1000)
		if layout == LayoutQemu72 {
			clock = fmt.Sprintf("%02d:%02d:%02d.%03d", h, m, sec, ms)
		} else {
			clock = fmt.Sprintf("%04d:%02d:%02d.%03d", h, m, sec, ms)
		}
		switch {
		case s.Icount != nil:
			icount = strconv.FormatInt(int64(*s.Icount), 10) // PRId64
		case layout != LayoutQemu72:
			icount = "--"
		}
	}
	if layout == LayoutQemu72 {
		if s == nil { // "%-10s%-17s%8s%20s%13s%11s"
			return padRight(id, 10) + padRight(tag, 17) + padLeft(size, 8) + padLeft(date, 20) + padLeft(clock, 13) + padLeft(icount, 11)
		}
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

// sizeSuffixes are size_to_str's units.
var sizeSuffixes = [...]string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}

// sizeToStr formats a byte count as QEMU's size_to_str: the binary unit
// that keeps the number under 1000, with three significant digits
// ("%0.3g"): "0 B", "4 MiB", "2.25 MiB", "0.977 MiB".
func sizeToStr(v uint64) string {
	_, exp := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := (exp - 1) / 10 // truncated toward zero, as C divides
	div := float64(uint64(1) << (10 * i))
	return strconv.FormatFloat(float64(v)/div, 'g', 3, 64) + " " + sizeSuffixes[i] + "B"
}

// writeSpecificHuman prints a "format-specific" data object under the
// header "Format specific information:" as bdrv_image_info_specific_dump
// does, indented by indent levels of four spaces; nothing at all when the
// object is empty. The object goes through its JSON form, the QObject
// qemu-img dumps.
func writeSpecificHuman(w *bufio.Writer, indent int, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return err
	}
	switch v := v.(type) {
	case map[string]any:
		if len(v) == 0 {
			return nil
		}
	case []any:
		if len(v) == 0 {
			return nil
		}
	case nil:
		return nil
	}
	fmt.Fprintf(w, "%*sFormat specific information:\n", indent*4, "")
	dumpQObject(w, indent+1, v)
	return nil
}

// dumpQObject is QEMU's dump_qobject: scalars as text, dictionaries and
// lists one member per line, nested ones indented one more level.
func dumpQObject(w *bufio.Writer, indent int, v any) {
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sortQDict(keys)
		for _, k := range keys {
			composite := isComposite(v[k])
			fmt.Fprintf(w, "%*s%s:%c", indent*4, "", strings.ReplaceAll(k, "-", " "), sep(composite))
			dumpQObject(w, indent+1, v[k])
			if !composite {
				w.WriteString("\n")
			}
		}
	case []any:
		for i, e := range v {
			composite := isComposite(e)
			fmt.Fprintf(w, "%*s[%d]:%c", indent*4, "", i, sep(composite))
			dumpQObject(w, indent+1, e)
			if !composite {
				w.WriteString("\n")
			}
		}
	case json.Number:
		w.WriteString(v.String())
	case string:
		w.WriteString(v)
	case bool:
		w.WriteString(strconv.FormatBool(v))
	}
}

func isComposite(v any) bool {
	switch v.(type) {
	case map[string]any, []any:
		return true
	}
	return false
}

func sep(composite bool) byte {
	if composite {
		return '\n'
	}
	return ' '
}

// qdictBuckets is QDICT_BUCKET_MAX, the size of a QDict's hash table.
const qdictBuckets = 512

// qdictHash is QEMU's tdb_hash, which places a key in a QDict bucket.
func qdictHash(key string) uint32 {
	v := 0x238F13AF * uint32(len(key))
	for i := 0; i < len(key); i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return 1103515243*v + 12345
}

// sortQDict puts keys in the order QEMU walks a QDict (qdict_first,
// qdict_next), the order qemu-img prints them in: by hash bucket. Within a
// bucket QEMU lists the key inserted last first; no two keys of any object
// qemu-img info prints share a bucket, so the name breaks such ties.
func sortQDict(keys []string) {
	sort.Slice(keys, func(i, j int) bool {
		bi, bj := qdictHash(keys[i])%qdictBuckets, qdictHash(keys[j])%qdictBuckets
		if bi != bj {
			return bi < bj
		}
		return keys[i] < keys[j]
	})
}
