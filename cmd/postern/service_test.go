package main

import (
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/spa"
)

// Live reload: a client added to postern.toml can knock after SIGHUP while
// the first client's grant lives on; a removed client is refused; a broken
// file changes nothing (logged with file:line:key, the ruleset as it was).
func TestReload(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	r.knock(r.p.Server4, "--for", "60s")
	alice := r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "alice before the reload")
	defer alice.Close()

	bob, _ := spa.GenerateClientKey()
	bobFile := r.writeKey("bob.key", bob.Encode())
	good, _ := os.ReadFile(r.cfgPath)
	withBob := string(good) + "\n[[client]]\nname = \"bob\"\npublic_key = \"" + bob.Public().String() +
		"\"\nallow = [\"tcp/22\"]\nmax_duration = \"60s\"\ndefault_duration = \"3s\"\n"
	reload := func(text string) int {
		t.Helper()
		if err := os.WriteFile(r.cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		mark := r.out.Mark()
		r.daemon.Process.Signal(syscall.SIGHUP)
		return mark
	}
	r.out.WaitAfter(t, reload(withBob), 2*time.Second, "msg=reloaded", "clients=2")
	r.knockWith(bobFile, r.server.Public().String(), r.p.Server4, "--allow", r.p.Client4b.String())
	r.waitOpen(r.p.Client4b, r.p.Server4, time.Second, "bob after he was added").Close()
	if err := echoes(alice); err != nil {
		t.Fatalf("alice's connection broke on reload: %v", err)
	}
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "alice's grant after the reload").Close()

	r.out.WaitAfter(t, reload(string(good)), 2*time.Second, "msg=reloaded", "clients=1")
	mark := r.out.Mark()
	r.knockWith(bobFile, r.server.Public().String(), r.p.Server4, "--allow", r.p.Client4b.String())
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", `reason="unknown client"`)

	ruleset := func() string {
		return regexp.MustCompile(`expires [0-9a-z.]+`).ReplaceAllString(r.p.Server.Exec(t, "nft", "list", "ruleset"), "")
	}
	before := ruleset()
	broken := strings.Replace(string(good), "port = 62201", "port = 99999", 1)
	r.out.WaitAfter(t, reload(broken), 2*time.Second, "reload refused", "postern.toml:", "spa.port")
	r.alive()
	if after := ruleset(); after != before {
		t.Fatalf("a refused reload changed the ruleset:\n%s\nthen:\n%s", before, after)
	}
	r.knock(r.p.Server4, "--for", "5s")
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "alice after a refused reload").Close()

	// postern reload checks the file first: a broken one never reaches the daemon.
	out, err := r.p.Server.Command(t.Context(), posternBin, "reload", "-c", r.cfgPath).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "spa.port") {
		t.Fatalf("postern reload of a broken file: %v\n%s", err, out)
	}
	os.WriteFile(r.cfgPath, []byte(withBob), 0o644)
	mark = r.out.Mark()
	if out, err := r.p.Server.Command(t.Context(), posternBin, "reload", "-c", r.cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("postern reload: %v\n%s", err, out)
	}
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=reloaded", "clients=2")
}
