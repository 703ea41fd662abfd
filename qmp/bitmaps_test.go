package qmp

import (
	"encoding/json"
	"testing"
	"time"
)

// TestBitmaps adds two persistent bitmaps in one transaction, writes
// through the disk where a VM has one, merges, disables, removes, and
// checks what QEMU lists and what it stores in the image when it quits.
func TestBitmaps(t *testing.T) {
	for _, kind := range []string{kindDrive, kindQSD} {
		t.Run(kind, func(t *testing.T) {
			ctx := testCtx(t, 20*time.Second)
			c := buildChain(t)
			tg := startTarget(t, kind, c)
			node := tg.disk
			err := tg.conn.Transaction(ctx, []TransactionAction{
				{Type: CmdBitmapAdd, Data: BlockDirtyBitmapAdd{Node: node, Name: "a", Persistent: Bool(true)}},
				{Type: CmdBitmapAdd, Data: BlockDirtyBitmapAdd{Node: node, Name: "b", Granularity: 4096, Persistent: Bool(true), Disabled: Bool(true)}},
				{Type: CmdBitmapAdd, Data: BlockDirtyBitmapAdd{Node: node, Name: "gone", Persistent: Bool(true)}},
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := uint64(0)
			if tg.hmp != nil {
				tg.hmpQemuIO(t, tg.disk, "write -P 0x44 0 70k")
				want = 2 * 65536
			}
			if err := tg.conn.BitmapMerge(ctx, BlockDirtyBitmapMerge{Node: node, Target: "b",
				Bitmaps: []BlockDirtyBitmap{{Node: node, Name: "a"}}}); err != nil {
				t.Fatal(err)
			}
			if err := tg.conn.BitmapDisable(ctx, BlockDirtyBitmap{Node: node, Name: "a"}); err != nil {
				t.Fatal(err)
			}
			if err := tg.conn.BitmapRemove(ctx, BlockDirtyBitmap{Node: node, Name: "gone"}); err != nil {
				t.Fatal(err)
			}
			err = tg.conn.BitmapClear(ctx, BlockDirtyBitmap{Node: node, Name: "nosuch"})
			if !IsClass(err, ClassGenericError) {
				t.Errorf("clearing a missing bitmap: got %v, want a GenericError", err)
			}
			all, err := tg.conn.NodeBitmaps(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]DirtyBitmapInfo{}
			for _, bms := range all {
				for _, b := range bms {
					got[b.Name] = b
				}
			}
			if len(got) != 2 || got["a"].Recording || got["b"].Recording || got["a"].Granularity != 65536 ||
				got["b"].Granularity != 4096 || got["a"].Count != want || got["b"].Count != want || !got["b"].Persistent {
				t.Fatalf("bitmaps %+v, want a (64k) and b (4k), both disabled, %d bytes dirty", got, want)
			}
			tg.quit()
			var info struct {
				FormatSpecific struct {
					Data struct {
						Bitmaps []struct {
							Name  string   `json:"name"`
							Flags []string `json:"flags"`
						} `json:"bitmaps"`
					} `json:"data"`
				} `json:"format-specific"`
			}
			if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", c.top)), &info); err != nil {
				t.Fatal(err)
			}
			if bms := info.FormatSpecific.Data.Bitmaps; len(bms) != 2 || len(bms[0].Flags) != 0 || len(bms[1].Flags) != 0 {
				t.Fatalf("stored bitmaps %+v, want a and b without flags", bms)
			}
		})
	}
}
