package qcow2

import (
	"fmt"
	"os"
	"path/filepath"
)

func ExampleOpenChain() {
	dir, _ := os.MkdirTemp("", "qcow2-example")
	defer os.RemoveAll(dir)
	name := filepath.Join(dir, "disk.qcow2")
	os.WriteFile(name, minimalImage(), 0o644)

	chain, err := OpenChain(name, ChainOptions{Root: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer chain.Close()
	chain.Map(0, chain.Size(), func(e *MapEntry) error {
		fmt.Printf("%d+%d depth=%d data=%t zero=%t\n", e.Start, e.Length, e.Depth, e.Data, e.Zero)
		return nil
	})
	buf := make([]byte, 11)
	chain.ReadAt(buf, 0)
	fmt.Printf("%s\n", buf)
	// Output:
	// 0+512 depth=0 data=true zero=false
	// 512+1048064 depth=0 data=false zero=true
	// hello qcow2
}

func ExampleFile_Check() {
	dir, _ := os.MkdirTemp("", "qcow2-example")
	defer os.RemoveAll(dir)
	name := filepath.Join(dir, "disk.qcow2")
	os.WriteFile(name, minimalImage(), 0o644)

	f, err := Open(name)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	res, err := f.Check()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.ExitCode(), res.AllocatedClusters, res.ImageEndOffset)
	// Output: 0 1 3072
}
