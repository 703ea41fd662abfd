package imagesnap_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/qchain/qchain/chain/imagesnap"
	"github.com/qchain/qchain/qcow2"
)

// Take a snapshot before an upgrade, and go back to it if the upgrade
// fails; a refusal says why in one line.
func Example() {
	ctx := context.Background()
	img := "vm.qcow2"
	if err := imagesnap.Create(ctx, img, "before-upgrade", imagesnap.Options{}); err != nil {
		if errors.Is(err, qcow2.ErrInUse) {
			log.Fatal("stop the VM first: ", err)
		}
		log.Fatal(err)
	}
	// ... the upgrade fails ...
	if _, err := imagesnap.Apply(img, "before-upgrade"); err != nil {
		log.Fatal(err)
	}
	snaps, err := imagesnap.List(img, "qcow2")
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range snaps {
		fmt.Println(s.ID, s.Name)
	}
}
