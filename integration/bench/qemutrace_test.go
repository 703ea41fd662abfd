package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// at is a QEMU trace timestamp ms milliseconds after a fixed second.
func at(ms float64) string { return fmt.Sprintf("1796000000.%06d", int64(ms*1000)) }

func writeTrace(t *testing.T, dir string, pid int, lines ...string) {
	t.Helper()
	if err := os.WriteFile(traceOf(dir, pid), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// base is the fixed second of the traces, as a time.
var base = time.Unix(1796000000, 0)

func ms(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }

// TestRevertSpan cuts an external revert into its parts from two qemus'
// traces (the monitor's replies have a newline of their own, giving empty
// lines, and the monitor greets before the machine's reset), the exec
// stamp and the old qemu's exit.
func TestRevertSpan(t *testing.T) {
	dir := t.TempDir()
	writeTrace(t, dir, 100,
		"101@"+at(1)+":handle_qmp_command mon 0x1 req: {\"execute\": \"qmp_capabilities\"}",
		"",
		"100@"+at(2)+":monitor_qmp_respond mon 0x1 resp: {\"return\": {}}",
		"101@"+at(4)+":handle_qmp_command mon 0x1 req: {\"execute\": \"quit\"}",
		"100@"+at(4.5)+":monitor_qmp_respond mon 0x1 resp: {\"return\": {}}")
	writeTrace(t, dir, 200,
		"200@"+at(20)+":resettable_reset obj=0x1 cold=0",
		"201@"+at(25)+":monitor_qmp_respond mon 0x2 resp: {\"QMP\": {\"version\": {}}}",
		"200@"+at(60)+":resettable_reset obj=0x2 cold=0",
		"201@"+at(61)+":handle_qmp_command mon 0x2 req: {\"execute\": \"qmp_capabilities\"}",
		"200@"+at(61.5)+":monitor_qmp_respond mon 0x2 resp: {\"return\": {}}",
		"201@"+at(62)+":handle_qmp_command mon 0x2 req: {\"execute\": \"migrate-incoming\", \"arguments\": {\"uri\": \"fd:m\"}}",
		"200@"+at(62.5)+":monitor_qmp_respond mon 0x2 resp: {\"return\": {}}",
		"200@"+at(63)+":migrate_set_state new state active",
		"200@"+at(140)+":migrate_set_state new state completed",
		"201@"+at(141)+":handle_qmp_command mon 0x2 req: {\"execute\": \"cont\"}",
		"200@"+at(141.2)+":monitor_qmp_respond mon 0x2 resp: {\"timestamp\": {}, \"event\": \"RESUME\"}",
		"200@"+at(141.5)+":monitor_qmp_respond mon 0x2 resp: {\"return\": {}}")
	if err := os.WriteFile(stampFile(dir), []byte(fmt.Sprintf("150 1\n200 %d\n", base.Add(ms(12)).UnixNano())), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := revertSpan(dir, 100, 200, base, base.Add(ms(10)), base.Add(ms(143)))
	if err != nil {
		t.Fatal(err)
	}
	want := revertParts{ToQuit: ms(4), Exit: ms(6), Between: ms(2), Start: ms(48), ToLoad: ms(2),
		Load: ms(78), ToCont: ms(1), Cont: ms(0.5), After: ms(1.5)}
	if p != want {
		t.Errorf("parts %+v, want %+v", p, want)
	}
	if p.qemu() != ms(6+48+78+0.5) {
		t.Errorf("QEMU's time %v", p.qemu())
	}
	// A new qemu that never loaded the state is an error, not a figure.
	writeTrace(t, dir, 300, "300@"+at(20)+":resettable_reset obj=0x1 cold=0")
	if _, err := revertSpan(dir, 100, 300, base, base, base); err == nil {
		t.Error("no error for a trace without a load")
	}
	if _, err := revertSpan(dir, 100, 400, base, base, base); err == nil {
		t.Error("no error for a pid without an exec stamp")
	}
}

// TestCreateSpan takes the last checkpoint's two migration parts.
func TestCreateSpan(t *testing.T) {
	dir := t.TempDir()
	writeTrace(t, dir, 7,
		"8@"+at(1)+":handle_qmp_command mon 0x1 req: {\"execute\": \"migrate\", \"arguments\": {\"uri\": \"fd:a\"}}",
		"7@"+at(50)+":migrate_set_state new state pre-switchover",
		"8@"+at(60)+":handle_qmp_command mon 0x1 req: {\"execute\": \"migrate-continue\", \"arguments\": {\"state\": \"pre-switchover\"}}",
		"7@"+at(70)+":migrate_set_state new state completed",
		"8@"+at(100)+":handle_qmp_command mon 0x1 req: {\"execute\": \"migrate\", \"arguments\": {\"uri\": \"fd:b\"}}",
		"7@"+at(130)+":migrate_set_state new state pre-switchover",
		"8@"+at(135)+":handle_qmp_command mon 0x1 req: {\"execute\": \"migrate-continue\", \"arguments\": {\"state\": \"pre-switchover\"}}",
		"7@"+at(137)+":migrate_set_state new state device",
		"7@"+at(139)+":migrate_set_state new state completed")
	d, err := createSpan(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	if d != ms(30+4) {
		t.Errorf("create span %v, want 34ms", d)
	}
}

// TestLastJobSpan takes the last job's created to concluded.
func TestLastJobSpan(t *testing.T) {
	dir := t.TempDir()
	tr := func(ms float64, job, states string) string {
		return "5@" + at(ms) + ":job_state_transition job " + job + " (ret: 0) attempting allowed transition (" + states + ")"
	}
	writeTrace(t, dir, 5,
		tr(1, "0xa", "undefined-->created"), tr(9, "0xa", "pending-->concluded"),
		tr(20, "0xb", "undefined-->created"), tr(25, "0xb", "created-->running"),
		tr(95, "0xb", "pending-->concluded"), tr(96, "0xb", "concluded-->null"))
	d, err := lastJobSpan(dir, 5)
	if err != nil {
		t.Fatal(err)
	}
	if d != ms(75) {
		t.Errorf("job span %v, want 75ms", d)
	}
}

// FuzzReadTrace: any file is read without a panic, and every event it
// returns has a name.
func FuzzReadTrace(f *testing.F) {
	f.Add([]byte("1@1796000000.000100:job_state_transition job 0x1 (ret: 0)\n\n2@x.y:bad\n"))
	f.Add([]byte("@.:\n1@1.:\n:@1.1 x\n"))
	dir := f.TempDir()
	path := filepath.Join(dir, "trace")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		evs, err := readTrace(path)
		if err != nil {
			return
		}
		for _, e := range evs {
			if e.Name == "" {
				t.Fatalf("event without a name: %+v", e)
			}
		}
	})
}
