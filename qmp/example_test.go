package qmp_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qchain/qchain/qmp"
)

// Commit the active layer of disk vda into its base and pivot to it,
// reporting progress; a second process could attach to the same job by
// its id.
func ExampleStartJob() {
	ctx := context.Background()
	conn, err := qmp.Dial(ctx, "/run/vm1/qmp.sock", qmp.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	job, err := qmp.StartJob(ctx, conn, qmp.BlockCommit{
		JobID:  qmp.JobID("commit", "vda"),
		Device: "vda",
	})
	if err != nil {
		log.Fatal(err)
	}
	_, err = job.Wait(ctx, qmp.WaitOptions{
		OnReady: qmp.ReadyPivot,
		Progress: func(cur, total int64) {
			fmt.Printf("\r%d/%d", cur, total)
		},
	})
	var je *qmp.JobError
	switch {
	case errors.As(err, &je):
		log.Fatalf("commit failed in QEMU: %s", je.Msg)
	case err != nil:
		log.Fatal(err)
	}
}

// Finish a job that a killed process left behind.
func ExampleAttachJob() {
	ctx := context.Background()
	conn, err := qmp.Dial(ctx, "/run/vm1/qmp.sock", qmp.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	job, err := qmp.AttachJob(ctx, conn, qmp.JobID("commit", "vda"))
	if errors.Is(err, qmp.ErrJobNotFound) {
		return // nothing left to do
	}
	if err != nil {
		log.Fatal(err)
	}
	if _, err := job.Wait(ctx, qmp.WaitOptions{OnReady: qmp.ReadyPivot}); err != nil {
		log.Fatal(err)
	}
}

// List the disks of a running VM with their backing chains.
func ExampleDiskChains() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := qmp.Dial(ctx, "/run/vm1/qmp.sock", qmp.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	disks, err := qmp.DiskChains(ctx, conn)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range disks {
		for depth, l := range d.Chain {
			fmt.Println(d.Name(), depth, l.NodeName, l.Format, l.Filename)
		}
	}
}

// Use go-qemu's generated commands over a Conn.
func ExampleConn_Run() {
	ctx := context.Background()
	conn, err := qmp.Dial(ctx, "/run/vm1/qmp.sock", qmp.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	v, err := raw.NewMonitor(conn).QueryVersion()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(v.Qemu.Major, v.Qemu.Minor)
}

// Take a snapshot with the guest's filesystems frozen; they are thawed
// whatever happens.
func ExampleWithFrozenFilesystems() {
	ctx := context.Background()
	ga, err := qmp.DialGuestAgent(ctx, "/run/vm1/qga.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer ga.Close()
	conn, err := qmp.Dial(ctx, "/run/vm1/qmp.sock", qmp.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	err = qmp.WithFrozenFilesystems(ctx, ga, func(ctx context.Context) error {
		return conn.Transaction(ctx, []qmp.TransactionAction{{
			Type: "blockdev-snapshot-sync",
			Data: qmp.BlockdevSnapshotSync{Device: "vda", SnapshotFile: "/images/vda.snap1.qcow2",
				Format: "qcow2", Mode: qmp.ModeAbsolutePaths},
		}}, nil)
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Run an offline stream on images no VM uses.
func ExampleStartStorageDaemon() {
	ctx := context.Background()
	d, err := qmp.StartStorageDaemon(ctx, qmp.StorageDaemonOptions{
		Blockdevs: []any{map[string]any{
			"driver": "qcow2", "node-name": "top",
			"file": map[string]any{"driver": "file", "filename": "/images/top.qcow2"},
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close(context.Background())
	job, err := qmp.StartJob(ctx, d.Conn, qmp.BlockStream{JobID: qmp.JobID("stream", "top"), Device: "top"})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := job.Wait(ctx, qmp.WaitOptions{}); err != nil {
		log.Fatal(err)
	}
}

func ExampleJobID() {
	fmt.Println(qmp.JobID("commit", "vda"))
	fmt.Println(qmp.JobID("commit", "/var/lib/libvirt/images/guest.qcow2"))
	// Output:
	// qchain-commit-vda
	// qchain-commit-_var_lib-be531ebe
}
