package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
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

// postern revoke closes a live grant at once, with either backend.
func TestRevoke(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, rigOptions{extra: "[firewall]\nbackend = \"" + backend + "\"\n"})
			r.start()
			r.knockOpen("60s")
			out, err := r.p.Server.Command(t.Context(), posternBin, "revoke", r.p.Client4.String(), "tcp/22").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "alice") {
				t.Fatalf("postern revoke: %v\n%s", err, out)
			}
			r.requireClosed(r.p.Client4, r.p.Server4, "right after postern revoke")
			if out, err := r.p.Server.Command(t.Context(), posternBin, "revoke", r.p.Client4.String()).CombinedOutput(); err == nil {
				t.Fatalf("revoking what is not granted succeeded:\n%s", out)
			}
		})
	}
}

// The shipped units pass systemd's own verifier (with the binary under
// test where the package puts /usr/sbin/postern).
func TestSystemdUnitVerifies(t *testing.T) {
	netnstest.Require(t, "systemd-analyze")
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"postern.service", "postern-setup.service"} {
		unit, err := os.ReadFile("../../packaging/" + name)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/sbin/postern", posternBin)), 0o644)
		paths = append(paths, path)
	}
	out, err := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), ".service:") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The fail2ban example matches the daemon's real refusal lines, with the
// source address, and no grant line.
func TestFail2banFilter(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "fail2ban-regex")
	r := newRig(t, rigOptions{})
	r.start()
	r.knockOpen("5s")
	otherServer, _ := spa.GenerateServerKey()
	for range 3 {
		r.knockWith(r.alice, otherServer.Public().String(), r.p.Server4) // bad mac1
	}
	deadline := time.Now().Add(2 * time.Second)
	for strings.Count(r.out.String(), "msg=refused") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("refusals not logged:\n%s", r.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	log := filepath.Join(r.dir, "postern.log")
	os.WriteFile(log, []byte(r.out.String()), 0o644)
	out, err := exec.Command("fail2ban-regex", "--print-all-matched", log, "../../examples/fail2ban/filter.d/postern.conf").CombinedOutput()
	if err != nil {
		t.Fatalf("fail2ban-regex: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Lines: \d+ lines, \d+ ignored, (\d+) matched`).FindStringSubmatch(string(out))
	if m == nil || m[1] != "3" || !strings.Contains(string(out), r.p.Client4.String()) {
		t.Fatalf("fail2ban-regex matched %v of the 3 refusals (and no grant):\n%s", m, out)
	}
}

// The metrics endpoint: counters by language and outcome and per
// configured identity, build info, live grants; promtool accepts it.
func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "promtool")
	r := newRig(t, rigOptions{})
	r.start()
	r.knockOpen("30s")
	r.knock(r.p.Server4, "--open", "tcp/23") // refused: port not allowed
	r.out.WaitFor(t, 2*time.Second, `reason="port not allowed"`)
	body := r.scrape()
	for _, want := range []string{
		`postern_knocks_total{language="spa",outcome="granted"} 1`,
		`postern_client_knocks_total{language="spa",client="alice",result="granted"} 1`,
		`postern_client_knocks_total{language="spa",client="alice",result="refused"} 1`,
		`postern_grants_live{backend="nftables"} 1`,
		`postern_build_info{version=`,
		"# TYPE postern_firewall_restores_total counter",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(body)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n%s", err, out, body)
	}
}

// The man pages come from the command definitions (postern(8) and a page
// per command) and the reference configuration (postern.toml(5)), and
// render with man -l without a warning.
func TestManPagesRender(t *testing.T) {
	netnstest.Require(t, "man")
	dir := t.TempDir()
	if out, err := exec.Command(posternBin, "man", dir).CombinedOutput(); err != nil {
		t.Fatalf("postern man: %v\n%s", err, out)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "*.[58]"))
	if len(pages) < 15 {
		t.Fatalf("only %d pages: %v", len(pages), pages)
	}
	render := func(page string) string {
		t.Helper()
		cmd := exec.Command("man", "-l", "-P", "cat", page)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "LC_ALL=C.UTF-8")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || stderr.Len() > 0 || len(out) < 200 {
			t.Fatalf("man -l %s: %v\n%s\n%s", filepath.Base(page), err, stderr.String(), out)
		}
		return string(out)
	}
	for _, p := range pages {
		render(p)
	}
	main := render(filepath.Join(dir, "postern.8"))
	// Words broken across lines (at a hyphen, or hyphenated by man) joined.
	flat := strings.ReplaceAll(regexp.MustCompile(`(‐|-)\n\s+`).ReplaceAllString(main, "$1"), "‐", "")
	for _, cmd := range []string{"knock", "server", "status", "revoke", "reload", "cleanup", "fwknop"} {
		if !strings.Contains(flat, "postern-"+cmd+"(8)") {
			t.Errorf("postern(8) does not point to postern-%s(8)", cmd)
		}
	}
	// Where a reader starts: the files and a quick start; a footer that
	// says version and date apart; no Windows shell's page.
	for _, want := range []string{"FILES", "/etc/postern/postern.toml", "/var/lib/postern", "EXAMPLE",
		"postern genkey --server -o", "ProxyCommand postern proxy %h %p"} {
		if !strings.Contains(flat, want) {
			t.Errorf("postern(8) lacks %q", want)
		}
	}
	if lines := strings.Split(strings.TrimSpace(main), "\n"); !regexp.MustCompile(`^postern \S+\s{3,}\w+ \d{4}\s+POSTERN\(8\)$`).MatchString(lines[len(lines)-1]) {
		t.Errorf("postern(8) footer %q", lines[len(lines)-1])
	}
	if _, err := os.Stat(filepath.Join(dir, "postern-completion-powershell.8")); err == nil {
		t.Error("a powershell completion page on a Linux man shelf")
	}
	toml := render(filepath.Join(dir, "postern.toml.5"))
	for _, key := range []string{"state_dir", "private_key_file", "max_skew", "on_exit", "log_format", "[FIREWALL]"} {
		if !strings.Contains(toml, key) {
			t.Errorf("postern.toml(5) lacks %s", key)
		}
	}
}

// Shell completion from the same definitions: bash's parses.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		out, err := exec.Command(posternBin, "completion", shell).Output()
		if err != nil || !strings.Contains(string(out), "postern") {
			t.Fatalf("postern completion %s: %v\n%s", shell, err, out)
		}
		if shell == "bash" {
			check := exec.Command("bash", "-n")
			check.Stdin = strings.NewReader(string(out))
			if msg, err := check.CombinedOutput(); err != nil {
				t.Fatalf("bash -n on the completion: %v\n%s", err, msg)
			}
		}
	}
}

// The Debian package: built by scripts/package.sh, installed with dpkg on
// this machine, every file in place, the unit verified, postern version
// the package's, and purged without a trace.
func TestDebianPackage(t *testing.T) {
	netnstest.Require(t, "dpkg", "systemd-analyze")
	if _, err := os.Stat("/usr/sbin/postern"); err == nil {
		t.Fatal("/usr/sbin/postern exists already: this test installs and purges the package on this machine")
	}
	build := exec.Command("bash", "scripts/package.sh")
	build.Dir = "../.."
	build.Env = append(os.Environ(), "VERSION=0.2.0~test")
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/package.sh: %v\n%s", err, out)
	}
	deb := filepath.Join("../..", strings.TrimSpace(string(out[strings.LastIndexByte(strings.TrimSpace(string(out)), '\n')+1:])))
	defer os.Remove(deb)
	if out, err := exec.Command("dpkg", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	purged := false
	defer func() {
		if !purged {
			exec.Command("dpkg", "--purge", "postern").Run()
		}
	}()
	files := []string{"/usr/sbin/postern", "/usr/lib/systemd/system/postern.service",
		"/usr/lib/systemd/system/postern-setup.service", "/etc/postern/postern.toml",
		"/usr/share/man/man8/postern.8.gz", "/usr/share/man/man8/postern-knock.8.gz", "/usr/share/man/man5/postern.toml.5.gz",
		"/usr/share/bash-completion/completions/postern", "/usr/share/zsh/vendor-completions/_postern",
		"/usr/share/fish/vendor_completions.d/postern.fish", "/usr/share/doc/postern/examples/reference.toml",
		"/usr/share/doc/postern/examples/fail2ban/filter.d/postern.conf"}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed package lacks %s", f)
		}
	}
	if st, err := os.Stat("/etc/postern/postern.toml"); err == nil && st.Mode().Perm() != 0o600 {
		t.Errorf("/etc/postern/postern.toml mode %04o", st.Mode().Perm())
	}
	if v, err := exec.Command("/usr/sbin/postern", "version").Output(); err != nil || !strings.HasPrefix(string(v), "postern 0.2.0~test (") {
		t.Errorf("postern version: %q %v", v, err)
	}
	if out, err := exec.Command("systemd-analyze", "verify", "--man=no", "/usr/lib/systemd/system/postern.service",
		"/usr/lib/systemd/system/postern-setup.service").CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, out)
	}
	if out, err := exec.Command("/usr/sbin/postern", "check-config").CombinedOutput(); err == nil {
		t.Errorf("the shipped example configuration validates: the daemon would start unconfigured\n%s", out)
	}
	if out, err := exec.Command("dpkg", "--purge", "postern").CombinedOutput(); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	purged = true
	for _, f := range append(files, "/etc/postern") {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left after purge", f)
		}
	}
}
