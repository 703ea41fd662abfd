package chain

import (
	"encoding/json"
	"testing"

	"github.com/qchain/qchain/qmp"
)

func actionsJSON(t *testing.T, a []qmp.TransactionAction) string {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCarryActions(t *testing.T) {
	old := []qmp.DirtyBitmapInfo{
		{Name: "rec", Recording: true, Persistent: true, Granularity: 65536},
		{Name: "off", Persistent: true},
		{Name: "transient", Recording: true},
		{Name: "bad", Recording: true, Persistent: true, Inconsistent: true},
		{Name: "again", Recording: true, Persistent: true, Granularity: 4096},
	}
	got := actionsJSON(t, carryActions("old", old, "new", []qmp.DirtyBitmapInfo{{Name: "again", Recording: true, Persistent: true}}))
	want := `[{"type":"block-dirty-bitmap-add","data":{"node":"new","name":"rec","granularity":65536,"persistent":true}},` +
		`{"type":"block-dirty-bitmap-disable","data":{"node":"old","name":"rec"}},` +
		`{"type":"block-dirty-bitmap-disable","data":{"node":"old","name":"again"}}]`
	if got != want {
		t.Errorf("carryActions:\n got %s\nwant %s", got, want)
	}
}

func TestMergeActions(t *testing.T) {
	bitmaps := map[string][]qmp.DirtyBitmapInfo{
		"top":  {{Name: "a", Recording: true, Persistent: true, Granularity: 65536}, {Name: "b", Persistent: true, Granularity: 4096}, {Name: "t"}},
		"mid":  {{Name: "a", Persistent: true}, {Name: "c", Persistent: true, Inconsistent: true}},
		"base": {{Name: "a", Persistent: true}, {Name: "c", Persistent: true}},
	}
	tests := []struct {
		name                 string
		from                 []string
		into                 string
		add, followRecording bool
		want                 string
	}{
		{name: "active commit", from: []string{"top"}, into: "base", add: true, followRecording: true, want: `[` +
			`{"type":"block-dirty-bitmap-enable","data":{"node":"base","name":"a"}},` +
			`{"type":"block-dirty-bitmap-merge","data":{"node":"base","target":"a","bitmaps":[{"node":"top","name":"a"}]}},` +
			`{"type":"block-dirty-bitmap-add","data":{"node":"base","name":"b","granularity":4096,"persistent":true,"disabled":true}},` +
			`{"type":"block-dirty-bitmap-merge","data":{"node":"base","target":"b","bitmaps":[{"node":"top","name":"b"}]}}]`},
		{name: "into the active image", from: []string{"mid", "base"}, into: "top", want: `[` +
			`{"type":"block-dirty-bitmap-merge","data":{"node":"top","target":"a","bitmaps":[{"node":"mid","name":"a"},{"node":"base","name":"a"}]}}]`},
		{name: "inconsistent source", from: []string{"mid"}, into: "base", add: true, want: `[` +
			`{"type":"block-dirty-bitmap-merge","data":{"node":"base","target":"a","bitmaps":[{"node":"mid","name":"a"}]}},` +
			`{"type":"block-dirty-bitmap-remove","data":{"node":"base","name":"c"}}]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := actionsJSON(t, mergeActions(tc.from, bitmaps, tc.into, tc.add, tc.followRecording)); got != tc.want {
				t.Errorf("\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}
