package qcow2

import (
	"strings"
	"testing"
)

func TestParseLayout(t *testing.T) {
	tests := []struct {
		in   string
		want Layout
		bad  bool
	}{
		{"10.0", LayoutQemu10, false},
		{"10", LayoutQemu10, false},
		{"7.2", LayoutQemu72, false},
		{"", 0, true},
		{"7", 0, true},
		{"8.2", 0, true},
		{"10.0.2", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseLayout(tt.in)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("ParseLayout(%q) = %v, %v; want %v (error: %t)", tt.in, got, err, tt.want, tt.bad)
		}
		if err != nil && !strings.Contains(err.Error(), Layouts) {
			t.Errorf("ParseLayout(%q): error %q does not name the accepted values", tt.in, err)
		}
	}
	var zero OutputOptions
	if zero.Layout != LayoutQemu10 || LayoutQemu10.String() != "10.0" || LayoutQemu72.String() != "7.2" {
		t.Errorf("the zero OutputOptions must print 10.0's layout: %v", zero.Layout)
	}
}
