package bitmap_test

import (
	"fmt"

	"github.com/qchain/qchain/chain/bitmap"
)

// A remove and an add of the same name cannot be one QMP transaction (the
// removed bitmap is released only when the transaction commits), so the
// plan cuts the request in two; an action on a bitmap that does not exist
// is refused before anything runs.
func ExampleNewPlan() {
	image := []bitmap.State{{Name: "daily", Granularity: 65536, Enabled: true}}
	req := bitmap.Request{Bitmap: "daily", Granularity: 4096, Actions: []bitmap.Action{
		{Kind: bitmap.Remove}, {Kind: bitmap.Add}, {Kind: bitmap.Disable},
	}}
	p, err := bitmap.NewPlan(req, image, nil, bitmap.DefaultGranularity(65536))
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Transactions)
	fmt.Printf("%+v\n", *p.Final)

	req = bitmap.Request{Bitmap: "weekly", Actions: []bitmap.Action{{Kind: bitmap.Clear}}}
	_, err = bitmap.NewPlan(req, image, nil, 65536)
	fmt.Println(err)
	// Output:
	// [[--remove] [--add --disable]]
	// {Name:daily Granularity:4096 Enabled:false Inconsistent:false Busy:false}
	// --clear: no bitmap weekly (bitmaps: daily)
}
