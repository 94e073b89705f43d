//go:build linux

package command

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
)

var addr = netip.MustParseAddr("198.18.0.2")

// waitFile polls until path holds want.
func waitFile(t *testing.T, path, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, _ := os.ReadFile(path)
		if string(b) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q, want %q", path, b, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExpand(t *testing.T) {
	got, err := Expand("iptables -A INPUT -s %IP% -j ACCEPT # %IP%", addr)
	if err != nil || got != "iptables -A INPUT -s 198.18.0.2 -j ACCEPT # 198.18.0.2" {
		t.Fatalf("%q %v", got, err)
	}
	if got, _ := Expand("x %IP%", netip.MustParseAddr("::ffff:198.18.0.2")); got != "x 198.18.0.2" {
		t.Fatalf("mapped address: %q", got)
	}
	if _, err := Expand("x %IP%", netip.MustParseAddr("fe80::1%eth0;reboot")); err == nil {
		t.Fatal("address with a zone accepted")
	}
	if _, err := Expand("x", netip.Addr{}); err == nil {
		t.Fatal("invalid address accepted")
	}
}

// The real shell: start now, stop after the delay, in that order.
func TestRunStartThenStop(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	r, err := Open(filepath.Join(dir, "pending"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	if err := r.Run("ssh", addr, "echo start %IP% >> "+out, "echo stop %IP% >> "+out, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFile(t, out, "start 198.18.0.2\n", time.Second)
	if len(r.Pending()) != 1 {
		t.Fatal("stop command not pending")
	}
	waitFile(t, out, "start 198.18.0.2\nstop 198.18.0.2\n", 2*time.Second)
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Fatalf("stop ran after %v", el)
	}
	for deadline := time.Now().Add(time.Second); len(r.Pending()) != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("stop command still pending after it ran")
		}
	}
}

// A stop command outlives the runner: recorded before the start command,
// run on time by the next runner, or at once if it is overdue.
func TestStopSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	state := filepath.Join(dir, "pending")
	r, err := Open(state, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run("ssh", addr, "", "echo stop %IP% >> "+out, 700*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	r.Close()
	var p Pending
	data, _ := os.ReadFile(state)
	if line, ok := strings.CutPrefix(strings.TrimSpace(string(data)), "+"); !ok || json.Unmarshal([]byte(line), &p) != nil ||
		!strings.Contains(p.Command, "198.18.0.2") {
		t.Fatalf("journal after close: %s", data)
	}
	r2, err := Open(state, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	// The stop writes when it ran: never before the time the journal holds.
	waitFile(t, out, "stop 198.18.0.2\n", 2*time.Second)
	if ran := time.Now(); ran.Before(p.Due) {
		t.Fatalf("stop ran %v before its time", p.Due.Sub(ran))
	}
	// Close waits until r2 has recorded the stop as done; only then may
	// the test write the state file itself.
	r2.Close()
	if len(r2.Pending()) != 0 {
		t.Fatal("stop still pending after it ran")
	}

	// Overdue (in the JSON array older versions wrote): runs immediately.
	overdue, _ := json.Marshal([]Pending{{ID: 7, Door: "d", Addr: "198.18.0.9", Command: "echo late >> " + out, Due: time.Now().Add(-time.Hour)}})
	os.WriteFile(state, overdue, 0o600)
	r3, err := Open(state, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	waitFile(t, out, "stop 198.18.0.2\nlate\n", time.Second)
}

func TestCorruptStateRefused(t *testing.T) {
	state := filepath.Join(t.TempDir(), "pending")
	os.WriteFile(state, []byte("{"), 0o600)
	if _, err := Open(state, slog.Default()); err == nil {
		t.Fatal("corrupt state accepted")
	}
}

func TestSplitArgs(t *testing.T) {
	got, err := SplitArgs(`/usr/sbin/ipset add allow 198.18.0.2,tcp:22 timeout 30 'a b' "c d" e\ f`)
	want := []string{"/usr/sbin/ipset", "add", "allow", "198.18.0.2,tcp:22", "timeout", "30", "a b", "c d", "e f"}
	if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := SplitArgs(`echo 'x`); err == nil {
		t.Fatal("unterminated quote accepted")
	}
}

// Without a shell, shell syntax in a command is just words.
func TestNoShellAndUser(t *testing.T) {
	netnstest.Require(t) // root, to run as another user; a failure under CI=true
	// A directory the unprivileged user can write to (t.TempDir's parent is
	// private to root).
	dir, err := os.MkdirTemp("", "postern-cmd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	out := filepath.Join(dir, "out")
	r, err := Open(filepath.Join(t.TempDir(), "pending"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// "touch FILE; FILE2" without a shell touches "FILE;" and "FILE2".
	if err := r.RunExpanded("d", addr, "/usr/bin/touch "+out+"; "+out+"2", "", 0, How{NoShell: true, User: "nobody"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		st, err := os.Stat(out + ";")
		if err == nil {
			if uid := st.Sys().(*syscall.Stat_t).Uid; uid == 0 {
				t.Fatal("command ran as root, not as nobody")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("command did not run")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("';' was interpreted by a shell")
	}
}

// Pending stop commands are bounded: MaxPendingPerSource per address and
// door (knockd runs a start and a stop for every completed sequence), at
// most MaxPendingPerDoor per door; the journal is compacted as stops
// complete.
func TestPendingBounds(t *testing.T) {
	state := filepath.Join(t.TempDir(), "pending")
	r, err := Open(state, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range MaxPendingPerSource {
		if err := r.RunExpanded("d", addr, "", "true", time.Hour, How{}); err != nil {
			t.Fatalf("stop %d for the same address and door: %v", i+1, err)
		}
	}
	if err := r.RunExpanded("d", addr, "", "true", time.Hour, How{}); !errors.Is(err, ErrPendingSource) {
		t.Fatalf("one over MaxPendingPerSource for the same address and door: %v", err)
	}
	if err := r.RunExpanded("other", addr, "", "true", time.Hour, How{}); err != nil {
		t.Fatalf("same address, another door: %v", err)
	}
	for i := MaxPendingPerSource; i < MaxPendingPerDoor; i++ {
		a := netip.AddrFrom4([4]byte{198, 20, byte(i >> 8), byte(i)})
		if err := r.RunExpanded("d", a, "", "true", time.Hour, How{}); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
	}
	if err := r.RunExpanded("d", netip.MustParseAddr("198.19.0.1"), "", "true", time.Hour, How{}); !errors.Is(err, ErrPendingFull) {
		t.Fatalf("one over MaxPendingPerDoor: %v", err)
	}
	if n := len(r.Pending()); n != MaxPendingPerDoor+1 {
		t.Fatalf("%d pending", n)
	}
}

// The journal stays compact: after many stops ran, it holds about what is
// live, not every line ever written.
func TestJournalCompacted(t *testing.T) {
	state := filepath.Join(t.TempDir(), "pending")
	r, err := Open(state, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range 300 {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if err := r.RunExpanded("d", a, "", "true", time.Millisecond, How{}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.Pending()) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	data, _ := os.ReadFile(state)
	if lines := strings.Count(string(data), "\n"); len(r.Pending()) != 0 || lines > 200 {
		t.Fatalf("%d pending, journal of %d lines after 300 stops ran", len(r.Pending()), lines)
	}
}

// A command's background child lives on after the command (as with
// knockd), but not after the runner: Close kills its process group.
func TestBackgroundChildEndsWithTheRunner(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	r, err := Open(filepath.Join(dir, "pending"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run("ssh", addr, "sleep 60 >/dev/null 2>&1 & echo $! > "+pidFile, "", 0); err != nil {
		t.Fatal(err)
	}
	var pid int
	deadline := time.Now().Add(5 * time.Second)
	for pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			t.Fatal("the command did not start its child")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(readProcStat(pid), "sleep") {
		t.Fatalf("child %d is not running", pid)
	}
	// Whether the command itself is still running (its group is killed on
	// Close) or done (its group lingers), the child must go.
	r.Close()
	deadline = time.Now().Add(2 * time.Second)
	for readProcStat(pid) != "" && !strings.Contains(readProcStat(pid), ") Z ") {
		if time.Now().After(deadline) {
			t.Fatalf("child %d outlived the runner: %s", pid, readProcStat(pid))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readProcStat(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return string(b)
}
