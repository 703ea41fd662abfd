package main

import (
	"debug/elf"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The direct checkpoint client runs each operation in a process of its
// own, as a person using bare QEMU runs a client program: qchain pays a
// process start on every operation, and a client inside the bench would
// not. The process is this program, re-executed with ckClientArg first,
// from a copy of its binary (copyClient), started through the launcher
// that times qchain's invocations (runSteps), fork to exit.

// ckClientArg, first on the command line, switches this program into the
// direct checkpoint client's mode.
const ckClientArg = "-qchain-bench-ckclient"

// clientMain runs one operation of the direct client on the qemu whose
// socket and pid file the flags name, and exits 0, or prints a one-line
// error and exits 1. The operations: create (external checkpoint with
// memory), revert (to it: the old qemu quit, a new one started in its own
// session and its pid written to the pid file), save and load (internal
// checkpoint), noop (nothing: the client's start-up cost).
func clientMain(args []string) int {
	fs := flag.NewFlagSet("bench client", flag.ContinueOnError)
	op := fs.String("op", "", "create, revert, save, load or noop")
	var d directVM
	fs.StringVar(&d.sock, "sock", "", "qemu's QMP socket")
	fs.StringVar(&d.pidfile, "pidfile", "", "file holding qemu's pid (rewritten by revert)")
	fs.StringVar(&d.log, "log", "", "qemu's log (the new qemu's, for revert)")
	fs.BoolVar(&d.mappedRAM, "mapped-ram", false, "QEMU has the mapped-ram capability")
	overlay := fs.String("overlay", "", "new overlay (create, revert)")
	backing := fs.String("backing", "", "the overlay's backing file (create, revert)")
	mem := fs.String("mem", "", "memory state file (create, revert)")
	command := fs.String("command", "", "JSON file holding the guest's command line, binary first (revert)")
	tag := fs.String("tag", "", "internal snapshot tag (save, load)")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	err := func() error {
		if *op == "noop" {
			return nil
		}
		d.readPid()
		switch *op {
		case "create":
			return d.createCheckpoint(*overlay, *backing, *mem)
		case "revert":
			b, err := os.ReadFile(*command)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &d.command); err != nil || len(d.command) == 0 {
				return fmt.Errorf("%s: no command line (%v)", *command, err)
			}
			return d.revertCheckpoint(*overlay, *backing, *mem)
		case "save", "load":
			return d.internalCheckpoint(*tag, *op == "load")
		}
		return fmt.Errorf("unknown operation %q", *op)
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench client: %s: %s\n", *op, strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	return 0
}

// copyClient copies this program's binary into a fresh temporary folder
// and returns the copy's path. Under go run the binary is the linker's
// output, written through a mapping: such a file sits in the page cache
// in small pages and costs about a millisecond more on every start until
// evicted, which qchain's binary, copied into place by make build, does
// not pay.
func copyClient() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "qchain-bench-ckclient-")
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "bench-ckclient")
	err = func() error {
		src, err := os.Open(self)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, src); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	}()
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dst, nil
}

// linkage says whether the binary at path is statically linked, as
// qchain's is (make build sets CGO_ENABLED=0), and its size.
func linkage(path string) string {
	size := "size unknown"
	if fi, err := os.Stat(path); err == nil {
		size = fmt.Sprintf("%.1f MiB", float64(fi.Size())/(1<<20))
	}
	f, err := elf.Open(path)
	if err != nil {
		return "linkage unknown, " + size
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "dynamically linked (built with cgo: run the bench with CGO_ENABLED=0, as make bench does), " + size
		}
	}
	return "static, " + size
}

// printClientFloor times, through the launcher, n runs of the direct
// checkpoint client doing nothing (-op noop): what its own start-up costs,
// beside the empty Go program's.
func printClientFloor(n int) {
	client, err := copyClient()
	if err != nil {
		fmt.Printf("- direct checkpoint client, no-op: not timed (%v)\n", err)
		return
	}
	defer os.RemoveAll(filepath.Dir(client))
	argv := []string{client, ckClientArg, "-op", "noop"}
	s := &Sample{}
	for i := -1; i < n; i++ { // one untimed run first, as timeRuns
		r, err := runOnce(time.Minute, argv)
		if err == nil && r.Exit != 0 {
			err = fmt.Errorf("exit status %d: %s", r.Exit, strings.TrimSpace(string(r.Stderr)))
		}
		if err != nil {
			fmt.Printf("- direct checkpoint client, no-op: not timed (%v)\n", err)
			return
		}
		if i >= 0 {
			s.Walls = append(s.Walls, r.Wall)
		}
	}
	fmt.Printf("- direct checkpoint client (this bench in client mode, %s), no-op: %s\n", linkage(client), fmtDur(s.Median()))
}
