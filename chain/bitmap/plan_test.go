package bitmap

import (
	"reflect"
	"strings"
	"testing"
)

func TestNewPlan(t *testing.T) {
	image := []State{
		{Name: "a", Granularity: 65536, Enabled: true},
		{Name: "off", Granularity: 4096},
		{Name: "bad", Granularity: 65536, Inconsistent: true},
	}
	source := []State{{Name: "s", Granularity: 512, Enabled: true}, {Name: "bad", Inconsistent: true}}
	acts := func(kinds ...ActionKind) []Action {
		var out []Action
		for _, k := range kinds {
			out = append(out, Action{Kind: k})
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		req     Request
		wantErr string
		wantTx  [][]Action
		final   *State
	}{
		{name: "add default granularity", req: Request{Bitmap: "n", Actions: acts(Add)},
			wantTx: [][]Action{acts(Add)}, final: &State{Name: "n", Granularity: 65536, Enabled: true}},
		{name: "add disabled with granularity", req: Request{Bitmap: "n", Actions: acts(Add), Granularity: 512, Disabled: true},
			wantTx: [][]Action{acts(Add)}, final: &State{Name: "n", Granularity: 512}},
		{name: "add then disable then enable", req: Request{Bitmap: "n", Actions: acts(Add, Disable, Clear, Enable)},
			wantTx: [][]Action{acts(Add, Disable, Clear, Enable)}, final: &State{Name: "n", Granularity: 65536, Enabled: true}},
		{name: "remove", req: Request{Bitmap: "a", Actions: acts(Remove)}, wantTx: [][]Action{acts(Remove)}},
		{name: "remove then add is two transactions", req: Request{Bitmap: "a", Actions: acts(Clear, Remove, Add, Disable)},
			wantTx: [][]Action{acts(Clear, Remove), acts(Add, Disable)}, final: &State{Name: "a", Granularity: 65536}},
		{name: "remove an inconsistent bitmap", req: Request{Bitmap: "bad", Actions: acts(Remove)}, wantTx: [][]Action{acts(Remove)}},
		{name: "merge from the image", req: Request{Bitmap: "off", Actions: []Action{{Kind: Merge, Source: "a"}, {Kind: Enable}}},
			wantTx: [][]Action{{{Kind: Merge, Source: "a"}, {Kind: Enable}}}, final: &State{Name: "off", Granularity: 4096, Enabled: true}},
		{name: "merge from a bitmap added before", req: Request{Bitmap: "a", Actions: []Action{{Kind: Merge, Source: "a"}}},
			wantTx: [][]Action{{{Kind: Merge, Source: "a"}}}, final: &image[0]},
		{name: "merge from a source file", req: Request{Bitmap: "a", SourceFile: "src", Actions: []Action{{Kind: Merge, Source: "s"}}},
			wantTx: [][]Action{{{Kind: Merge, Source: "s"}}}, final: &image[0]},

		{name: "no action", req: Request{Bitmap: "a"}, wantErr: "need at least one of --add"},
		{name: "empty name", req: Request{Actions: acts(Add)}, wantErr: "name is empty"},
		{name: "long name", req: Request{Bitmap: strings.Repeat("x", 1024), Actions: acts(Add)}, wantErr: "at most 1023"},
		{name: "granularity without add", req: Request{Bitmap: "a", Actions: acts(Clear), Granularity: 4096}, wantErr: "applies only to --add"},
		{name: "disabled without add", req: Request{Bitmap: "a", Actions: acts(Clear), Disabled: true}, wantErr: "--disabled applies only to --add"},
		{name: "source without merge", req: Request{Bitmap: "a", Actions: acts(Clear), SourceFile: "x"}, wantErr: "applies only to --merge"},
		{name: "granularity not a power of two", req: Request{Bitmap: "n", Actions: acts(Add), Granularity: 1000}, wantErr: "granularity 1000 is not a power of two"},
		{name: "granularity too small", req: Request{Bitmap: "n", Actions: acts(Add), Granularity: 256}, wantErr: "from 512 to 2 GiB"},
		{name: "granularity too large", req: Request{Bitmap: "n", Actions: acts(Add), Granularity: 1 << 32}, wantErr: "from 512 to 2 GiB"},
		{name: "duplicate add", req: Request{Bitmap: "a", Actions: acts(Add)}, wantErr: "--add: bitmap a already exists"},
		{name: "add twice", req: Request{Bitmap: "n", Actions: acts(Add, Add)}, wantErr: "--add: bitmap n already exists"},
		{name: "clear a missing bitmap", req: Request{Bitmap: "x", Actions: acts(Clear)}, wantErr: "--clear: no bitmap x (bitmaps: a, bad, off)"},
		{name: "enable after remove", req: Request{Bitmap: "a", Actions: acts(Remove, Enable)}, wantErr: "--enable: no bitmap a"},
		{name: "enable an inconsistent bitmap", req: Request{Bitmap: "bad", Actions: acts(Enable)}, wantErr: "inconsistent"},
		{name: "merge a missing source", req: Request{Bitmap: "a", Actions: []Action{{Kind: Merge, Source: "zz"}}}, wantErr: "--merge zz: no bitmap zz ("},
		{name: "merge a missing source of a file", req: Request{Bitmap: "a", SourceFile: "src", Actions: []Action{{Kind: Merge, Source: "a"}}},
			wantErr: "--merge a: no bitmap a in src (bitmaps in src: bad, s)"},
		{name: "merge an inconsistent source", req: Request{Bitmap: "a", SourceFile: "src", Actions: []Action{{Kind: Merge, Source: "bad"}}}, wantErr: "source bitmap bad is inconsistent"},
		{name: "merge into a missing bitmap", req: Request{Bitmap: "x", Actions: []Action{{Kind: Merge, Source: "a"}}}, wantErr: "--merge a: no bitmap x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var src []State
			if tc.req.SourceFile != "" {
				src = source
			}
			p, err := NewPlan(tc.req, image, src, 65536)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.Transactions, tc.wantTx) {
				t.Errorf("transactions %v, want %v", p.Transactions, tc.wantTx)
			}
			if !reflect.DeepEqual(p.Final, tc.final) {
				t.Errorf("final %+v, want %+v", p.Final, tc.final)
			}
		})
	}
}

func TestDefaultGranularity(t *testing.T) {
	for cs, want := range map[uint64]uint64{512: 4096, 4096: 4096, 65536: 65536, 2 << 20: 65536} {
		if got := DefaultGranularity(cs); got != want {
			t.Errorf("DefaultGranularity(%d) = %d, want %d", cs, got, want)
		}
	}
}
