package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/internal/netnstest"
)

// Not root: the daemon's tools fail with the kernel's "operation not
// permitted"; the user is told what is missing, and the backend is named
// once.
func TestNotRootIsExplained(t *testing.T) {
	netnstest.Require(t, "setpriv")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "postern")
	data, err := os.ReadFile(posternBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"status"}, {"server", "-c", "/nonexistent.toml"}} {
		cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", bin}, args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "hint: this needs root") {
			t.Errorf("postern %s as nobody: %v\n%s", args, err, out)
		}
		if strings.Contains(string(out), "nftables: nftables:") {
			t.Errorf("the backend named twice:\n%s", out)
		}
	}
	if h := permissionHint(errors.New("p.toml:3: interface: missing"), 1000); h != "" {
		t.Errorf("a hint for an error that is not about permissions: %q", h)
	}
}
