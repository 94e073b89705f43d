package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/server"
)

// The never-fail-open, never-lock-out tests: what real servers do to a
// running daemon (a firewall service flushing the ruleset, a link flap, an
// interface re-created, a read-only disk, a bad state file at boot) must
// neither open a protected port to everyone nor shut the owner out.

// restoredWithin waits for the daemon's verdict that it restored its rules.
func (r *rig) restoredWithin(mark int, within time.Duration, what string) {
	r.t.Helper()
	r.out.WaitAfter(r.t, mark, within, "firewall restored")
	r.alive()
}

// tamperAndCheck runs tamper with a live grant for A (Client4) and an open
// connection from it, then checks: restored within a second, the port
// closed to B (Client4b), A's connection alive, a new knock for B opens.
func (r *rig) tamperAndCheck(name string, tamper func()) {
	r.t.Helper()
	r.knock(r.p.Server4, "--for", "60s")
	a := r.waitOpen(r.p.Client4, r.p.Server4, time.Second, name+": A after the knock")
	defer a.Close()
	mark := r.out.Mark()
	tamper()
	r.restoredWithin(mark, time.Second, name)
	r.requireClosed(r.p.Client4b, r.p.Server4, name+": B after restore")
	if err := echoes(a); err != nil {
		r.t.Fatalf("%s: A's connection broke: %v", name, err)
	}
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, name+": A's grant restored").Close()
	r.knock(r.p.Server4, "--for", "2s", "--allow", r.p.Client4b.String())
	r.waitOpen(r.p.Client4b, r.p.Server4, time.Second, name+": B after its own knock").Close()
	r.waitClosed(r.p.Client4b, r.p.Server4, 4*time.Second, name+": B's grant expires")
}

// A typical distribution ruleset file (Debian's /etc/nftables.conf): it
// starts by flushing everything, postern's table included.
const distroRuleset = `flush ruleset
table inet filter {
	chain input { type filter hook input priority filter; policy accept; }
	chain forward { type filter hook forward priority filter; policy accept; }
	chain output { type filter hook output priority filter; policy accept; }
}
`

func TestNFTablesTamperingIsRestored(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	file := filepath.Join(r.dir, "nftables.conf")
	os.WriteFile(file, []byte(distroRuleset), 0o644)
	r.tamperAndCheck("nft flush ruleset", func() { r.p.Server.Exec(t, "nft", "flush", "ruleset") })
	r.tamperAndCheck("nft -f distribution file", func() { r.p.Server.Exec(t, "nft", "-f", file) })
	r.tamperAndCheck("nft delete table", func() { r.p.Server.Exec(t, "nft", "delete", "table", "inet", "postern") })
	if n := r.gauge("postern_firewall_restores_total"); n < 3 {
		t.Fatalf("postern_firewall_restores_total = %v, want ≥ 3", n)
	}
}

func TestIPTablesTamperingIsRestored(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables", "ip6tables", "ipset", "iptables-restore")
	r := newRig(t, rigOptions{extra: "[firewall]\nbackend = \"iptables\"\n"})
	r.start()
	ns := r.p.Server
	r.tamperAndCheck("iptables -F", func() { ns.Exec(t, "iptables", "-F") })
	r.tamperAndCheck("iptables -X POSTERN", func() {
		ns.Exec(t, "iptables", "-D", "INPUT", "-j", "POSTERN")
		ns.Exec(t, "iptables", "-F", "POSTERN")
		ns.Exec(t, "iptables", "-X", "POSTERN")
	})
	r.tamperAndCheck("ipset destroy", func() {
		for _, c := range []string{"iptables", "ip6tables"} {
			ns.Exec(t, c, "-D", "INPUT", "-j", "POSTERN")
			ns.Exec(t, c, "-F", "POSTERN")
			ns.Exec(t, c, "-X", "POSTERN")
		}
		ns.Exec(t, "ipset", "destroy", "postern4")
		ns.Exec(t, "ipset", "destroy", "postern6")
	})
	r.tamperAndCheck("iptables-restore without postern", func() {
		ns.ExecInput(t, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "iptables-restore")
	})
}

// An element removed from the grant set behind the daemon's back is gone:
// a re-knock asking for less time than the daemon remembers still opens.
func TestRegrantAfterGrantRemovedBehindTheDaemon(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	r.knockOpen("60s")
	r.p.Server.Exec(t, "nft", "flush", "set", "inet", "postern", "grants4")
	r.requireClosed(r.p.Client4, r.p.Server4, "after the set was flushed")
	r.knock(r.p.Server4, "--for", "5s")
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after a shorter re-knock").Close()
}

// The iptables chain only drops or returns: the administrator's own INPUT
// rules still decide about traffic postern lets through.
func TestIPTablesAdminBanStillCuts(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables", "ip6tables", "ipset")
	r := newRig(t, rigOptions{extra: "[firewall]\nbackend = \"iptables\"\n"})
	r.p.Server.Echo(t, "[::]:8080")
	r.start()
	c, err := r.p.Client.Dial("tcp", r.p.Client4b, netip.AddrPortFrom(r.p.Server4, 8080), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoes(c); err != nil {
		t.Fatal(err)
	}
	r.p.Server.Exec(t, "iptables", "-A", "INPUT", "-s", r.p.Client4b.String(), "-j", "DROP")
	if err := echoes(c); err == nil {
		t.Fatal("an established connection survived the administrator's ban: postern's chain accepted it")
	}
}

func TestLinkFlapAndInterfaceRecreated(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	// down and up
	r.p.Server.IP(t, "link", "set", netnstest.Interface, "down")
	time.Sleep(300 * time.Millisecond)
	r.p.Server.IP(t, "link", "set", netnstest.Interface, "up")
	r.alive()
	r.knockUntilOpen(2*time.Second, "after link down/up")
	// deleted and created again: a new index
	mark := r.out.Mark()
	r.p.DelLink(t)
	r.out.WaitAfter(t, mark, 2*time.Second, "interface gone")
	r.p.Link(t)
	r.out.WaitAfter(t, mark, 2*time.Second, "interface up; capturing")
	r.alive()
	r.knockUntilOpen(2*time.Second, "after the interface was re-created")
	r.requireClosed(r.p.Client4b, r.p.Server4, "another address after re-creation")
}

func TestInterfaceAbsentAtStart(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.p.DelLink(t)
	r.start()
	r.out.WaitFor(t, time.Second, "waiting for interface")
	time.Sleep(3 * time.Second)
	r.alive()
	r.p.Link(t)
	r.knockUntilOpen(2*time.Second, "after the interface appeared")
	r.requireClosed(r.p.Client4b, r.p.Server4, "another address")
}

// knockUntilOpen knocks until the port opens (a freshly created link needs
// a moment before it carries packets), failing after within.
func (r *rig) knockUntilOpen(within time.Duration, what string) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		r.knock(r.p.Server4, "--for", "3s")
		c, err := r.p.Client.Dial("tcp", r.p.Client4, netip.AddrPortFrom(r.p.Server4, 22), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: port did not open within %v: %v\n%s", what, within, err, r.out)
		}
	}
}

// A state_dir that refuses writes (read-only, or full) locks nobody out:
// knocks are decided from the replay state in memory, which still refuses
// a replay; the daemon says so loudly, and writes the state once the disk
// takes writes again, so that a replay is refused after a restart too.
func TestUnwritableStateDirDecidesFromMemory(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"read-only", "full"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, rigOptions{})
			r.start()
			// The daemon has a mount namespace of its own (ip netns exec
			// makes one): mount inside it.
			state := filepath.Join(r.dir, "state")
			inDaemon := func(args ...string) []string {
				return append([]string{"--target", strconv.Itoa(r.daemon.Process.Pid), "--mount"}, args...)
			}
			switch how {
			case "read-only":
				netnstest.Run(t, "nsenter", inDaemon("mount", "--bind", state, state)...)
				netnstest.Run(t, "nsenter", inDaemon("mount", "-o", "remount,ro,bind", state)...)
			case "full":
				// A small tmpfs over the state directory holding a copy of
				// it, then filled to the last byte.
				netnstest.Run(t, "nsenter", inDaemon("sh", "-c", "cp -a "+state+" "+state+".copy && "+
					"mount -t tmpfs -o size=64k,mode=0700 tmpfs "+state+" && cp -a "+state+".copy/. "+state+"/ && "+
					"(dd if=/dev/zero of="+state+"/filler bs=4k 2>/dev/null; true)")...)
			}
			mark := r.out.Mark()
			sniffed := r.sniff()
			r.knock(r.p.Server4)
			r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "knock with an unwritable state_dir").Close()
			r.out.WaitAfter(t, mark, 2*time.Second, "replay state cannot be written", "unsaved=1")
			knock := <-sniffed
			mark = r.out.Mark()
			r.sendRaw(r.p.Client4b, r.p.Server4, knock)
			r.out.WaitAfter(t, mark, time.Second, "msg=refused", "reason=replay")
			r.alive()
			mark = r.out.Mark()
			switch how {
			case "read-only":
				netnstest.Run(t, "nsenter", inDaemon("umount", state)...)
			case "full":
				netnstest.Run(t, "nsenter", inDaemon("rm", state+"/filler")...)
			}
			r.out.WaitAfter(t, mark, 2*time.Second, "replay state written again", "decisions=1")
			if how == "full" {
				// What the daemon wrote is on the tmpfs: carry it back, as
				// the disk itself would have kept it.
				netnstest.Run(t, "nsenter", inDaemon("sh", "-c", "cp "+state+"/"+server.ReplayFile+" "+state+".copy/ && "+
					"umount "+state+" && cp -a "+state+".copy/. "+state+"/")...)
			}
			r.signal(syscall.SIGTERM)
			r.start()
			mark = r.out.Mark()
			r.sendRaw(r.p.Client4b, r.p.Server4, knock)
			r.out.WaitAfter(t, mark, time.Second, "msg=refused", "reason=replay")
		})
	}
}

// A fresh namespace stands in for a reboot: the daemon refuses a corrupt
// replay file on purpose, and the protected port must still be closed.
func TestCorruptStateAtBootStaysClosed(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	state := filepath.Join(r.dir, "state")
	os.MkdirAll(state, 0o700)
	os.WriteFile(filepath.Join(state, server.ReplayFile), []byte("garbage\n"), 0o600)
	r.requireOpenWithoutPostern()
	out, err := r.p.Server.Command(context.Background(), posternBin, "server", "-c", r.cfgPath).CombinedOutput()
	if err == nil {
		t.Fatalf("daemon started with a corrupt replay file:\n%s", out)
	}
	if !strings.Contains(string(out), "corrupt") || !strings.Contains(string(out), "stays closed") {
		t.Fatalf("error does not say what and that the firewall stays closed:\n%s", out)
	}
	r.requireClosed(r.p.Client4, r.p.Server4, "after a failed start")
	r.requireClosed(r.p.Client4b, r.p.Server4, "after a failed start")
}

// requireOpenWithoutPostern checks the test's premise: nothing but postern
// closes the port.
func (r *rig) requireOpenWithoutPostern() {
	r.t.Helper()
	r.waitOpen(r.p.Client4, r.p.Server4, 3*time.Second, "before postern ran").Close()
}

func TestSetupInstallsClosedState(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.requireOpenWithoutPostern()
	if out, err := r.p.Server.Command(context.Background(), posternBin, "setup", "-c", r.cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	r.requireClosed(r.p.Client4, r.p.Server4, "after postern setup")
}

// Every subcommand prints help for -h and --help, exits 0 and changes
// nothing; cleanup refuses while the daemon runs; status --json lists the
// grant with its client's name.
func TestHelpNeverActsAndCleanupRefuses(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	r.knockOpen("60s")
	ruleset := func() string { // without the ticking "expires 59s880ms"
		return regexp.MustCompile(`expires [0-9a-z.]+`).ReplaceAllString(r.p.Server.Exec(t, "nft", "list", "ruleset"), "")
	}
	before := ruleset()
	for _, cmd := range []string{"genkey", "pubkey", "token", "server", "check-config", "setup", "reload", "revoke", "knock", "fwknop", "proxy",
		"ssh", "status", "cleanup", "man", "profile"} {
		for _, h := range []string{"-h", "--help"} {
			c := r.p.Server.Command(context.Background(), posternBin, cmd, h)
			c.Stdin = strings.NewReader("")
			out, err := c.CombinedOutput()
			if err != nil {
				t.Errorf("postern %s %s: %v\n%s", cmd, h, err, out)
			}
			if !strings.Contains(strings.ToLower(string(out)), "usage") {
				t.Errorf("postern %s %s printed no usage:\n%s", cmd, h, out)
			}
		}
	}
	if after := ruleset(); after != before {
		t.Fatalf("a --help changed the ruleset:\n%s\nthen:\n%s", before, after)
	}
	out, err := r.p.Server.Command(context.Background(), posternBin, "cleanup").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "running") || !strings.Contains(string(out), "tcp/22") {
		t.Fatalf("cleanup with the daemon running: %v\n%s", err, out)
	}
	r.requireClosed(r.p.Client4b, r.p.Server4, "after a refused cleanup")
	r.checkStatusJSON("nftables")
}

func (r *rig) checkStatusJSON(backend string) {
	r.t.Helper()
	var rep statusReport
	js := r.p.Server.Exec(r.t, posternBin, "status", "--json")
	if err := json.Unmarshal([]byte(js), &rep); err != nil {
		r.t.Fatalf("status --json: %v\n%s", err, js)
	}
	if !strings.HasPrefix(rep.Daemon, "running") || len(rep.Grants) != 1 || rep.Grants[0].Name != "spa:alice" ||
		rep.Grants[0].Address != r.p.Client4.String() || rep.Grants[0].Backend != backend || rep.Grants[0].ExpiresIn <= 0 {
		r.t.Fatalf("status --json:\n%s", js)
	}
}

func TestIPTablesStatusJSON(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables", "ip6tables", "ipset")
	r := newRig(t, rigOptions{extra: "[firewall]\nbackend = \"iptables\"\n"})
	r.start()
	r.knockOpen("60s")
	r.checkStatusJSON("iptables")
}

// A start command that leaves a child holding its output must not keep the
// daemon from stopping.
func TestSIGTERMWithBackgroundedCommand(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true, extra: `
[[door]]
name = "bg"
sequence = ["tcp/7000", "tcp/8000"]
seq_timeout = "5s"
start_command = "sleep 120 &"
`})
	r.start()
	mark := r.out.Mark()
	for _, p := range []uint16{7000, 8000} {
		r.p.Client.Dial("tcp", r.p.Client4, netip.AddrPortFrom(r.p.Server4, p), 100*time.Millisecond)
	}
	r.out.WaitAfter(t, mark, 3*time.Second, "start command ran")
	start := time.Now()
	r.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("daemon still running 5 s after SIGTERM")
	}
	r.daemon = nil
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
}

// The systemd watchdog gets pings while the daemon is healthy.
func TestWatchdogPings(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	sock := filepath.Join(r.dir, "notify.sock")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r.env = []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=600000"}
	r.start()
	got := map[string]int{}
	buf := make([]byte, 256)
	l.SetReadDeadline(time.Now().Add(3 * time.Second))
	for got["WATCHDOG=1"] < 3 {
		n, err := l.Read(buf)
		if err != nil {
			t.Fatalf("notifications so far %v: %v", got, err)
		}
		got[string(buf[:n])]++
	}
	if got["READY=1"] != 1 {
		t.Fatalf("notifications %v: want READY=1 once", got)
	}
}

// gauge scrapes one metric without labels from the daemon.
func (r *rig) gauge(name string) float64 {
	r.t.Helper()
	for _, line := range strings.Split(r.scrape(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscanf(v, "%g", &f)
			return f
		}
	}
	r.t.Fatalf("no metric %s", name)
	return 0
}

// A host ruleset that drops by default is warned about at start-up, and
// the one rule the warning asks for makes grants work, still for the
// granted address only.
func TestHostDropPolicyWarns(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	ns := r.p.Server
	ns.Exec(t, "nft", "add", "table", "inet", "filter")
	ns.Exec(t, "nft", "add", "chain", "inet", "filter", "input", "{ type filter hook input priority 0; policy drop; }")
	ns.Exec(t, "nft", "add", "rule", "inet", "filter", "input", "ct", "state", "established,related", "accept")
	r.start()
	r.out.WaitFor(t, time.Second, "may drop granted traffic", "inet filter input")
	ns.Exec(t, "nft", "add", "rule", "inet", "filter", "input", "tcp", "dport", "22", "accept")
	r.requireClosed(r.p.Client4, r.p.Server4, "before the knock, with the accept rule")
	r.knock(r.p.Server4)
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after the knock").Close()
	r.requireClosed(r.p.Client4b, r.p.Server4, "another address")
}
