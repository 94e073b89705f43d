package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

func TestKnockOpensPortForOneAddressIPv4(t *testing.T) {
	t.Parallel()
	testKnockOpens(t, func(r *rig) (srv, cli, other netip.Addr) { return r.p.Server4, r.p.Client4, r.p.Client4b })
}

func TestKnockOpensPortForOneAddressIPv6(t *testing.T) {
	t.Parallel()
	testKnockOpens(t, func(r *rig) (srv, cli, other netip.Addr) { return r.p.Server6, r.p.Client6, r.p.Client6b })
}

// testKnockOpens: closed before; open within 1 s of the knock for the
// knocking address only; closed again after the duration, while a
// connection made during the grant survives.
func testKnockOpens(t *testing.T, addrs func(*rig) (srv, cli, other netip.Addr)) {
	r := newRig(t, rigOptions{})
	r.start()
	srv, cli, other := addrs(r)
	r.requireClosed(cli, srv, "before the knock")

	r.knock(srv, "--for", "3s")
	knocked := time.Now()
	conn := r.waitOpen(cli, srv, time.Second, "after the knock")
	defer conn.Close()
	r.out.WaitFor(t, time.Second, "msg=granted", "client=alice", "src="+cli.String(), "ports=tcp/22")
	r.requireClosed(other, srv, "second client address during the grant")

	time.Sleep(time.Until(knocked.Add(3 * time.Second)))
	r.waitClosed(cli, srv, time.Second, "after the grant's duration")
	if err := echoes(conn); err != nil {
		t.Fatalf("connection established during the grant did not survive its expiry: %v", err)
	}
	r.alive()
}

func TestReplayRefusedAlsoAfterRestart(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	sniffed := r.sniff()
	r.knock(r.p.Server4, "--for", "1s")
	var pkt []byte
	select {
	case pkt = <-sniffed:
	case <-time.After(3 * time.Second):
		t.Fatal("knock not captured")
	}
	if len(pkt) != spa.PacketSize {
		t.Fatalf("captured %d bytes", len(pkt))
	}
	r.out.WaitFor(t, 2*time.Second, "msg=granted")
	r.waitClosed(r.p.Client4, r.p.Server4, 3*time.Second, "grant expiry")

	for _, from := range []netip.Addr{r.p.Client4, r.p.Client4b} {
		mark := r.out.Mark()
		r.sendRaw(from, r.p.Server4, pkt)
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", "src="+from.String(), `reason=replay`)
		r.requireClosed(r.p.Client4, r.p.Server4, "replayed knock from "+from.String())
	}

	r.signal(syscall.SIGTERM)
	r.start()
	mark := r.out.Mark()
	r.sendRaw(r.p.Client4, r.p.Server4, pkt)
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", `reason=replay`)
	r.requireClosed(r.p.Client4, r.p.Server4, "replay after restart")
	if strings.Contains(r.out.String(), "msg=granted language=spa src="+r.p.Client4b.String()) {
		t.Fatal("a replay was granted")
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	otherServer, _ := spa.GenerateServerKey()
	pub := r.server.Public().String()
	srv := r.p.Server4
	tests := []struct {
		name   string
		key    string
		server string
		flags  []string
		reason string
	}{
		{"stale timestamp", r.alice, pub, []string{"--time-offset", "-2m"}, `reason="stale timestamp"`},
		{"future timestamp", r.alice, pub, []string{"--time-offset", "2m"}, `reason="future timestamp"`},
		{"unknown client key", r.stranger, pub, nil, `reason="unknown client"`},
		{"wrong server key", r.alice, otherServer.Public().String(), nil, `reason="bad mac1"`},
		{"port outside allow", r.alice, pub, []string{"--open", "tcp/23"}, `reason="port not allowed"`},
		{"duration over max_duration", r.alice, pub, []string{"--for", "2m"}, `reason="duration too long"`},
		{"use source not allowed", r.alice, pub, []string{"--allow", "source"}, `reason="use source not allowed"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mark := r.out.Mark()
			r.knockWith(tt.key, tt.server, srv, tt.flags...)
			r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", "src="+r.p.Client4.String(), tt.reason)
			r.requireClosed(r.p.Client4, srv, tt.name)
		})
	}
	if strings.Contains(r.out.String(), "msg=granted") {
		t.Fatalf("something was granted:\n%s", r.out)
	}
	// And a good knock still works after all that.
	r.knock(srv)
	r.waitOpen(r.p.Client4, srv, time.Second, "valid knock after refusals").Close()
}

func TestGrantExpiresAfterSIGKILL(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	r.knock(r.p.Server4, "--for", "3s")
	knocked := time.Now()
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after the knock").Close()
	r.signal(syscall.SIGKILL)

	r.waitOpen(r.p.Client4, r.p.Server4, 200*time.Millisecond, "grant after the daemon died").Close()
	r.requireClosed(r.p.Client4b, r.p.Server4, "another address after the daemon died")
	time.Sleep(time.Until(knocked.Add(3 * time.Second)))
	r.waitClosed(r.p.Client4, r.p.Server4, time.Second, "expiry with the daemon dead")
	r.requireClosed(r.p.Client4b, r.p.Server4, "another address after expiry")
}

// TestFlood: 100 000 random packets and 10 000 well-formed-looking ones (the
// right length and header, random body) to the knock port; the daemon stays
// up, counts them, and a valid knock afterwards still opens the port.
func TestFlood(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	rng := rand.New(rand.NewPCG(1, 2))
	var batch [][]byte
	flush := func() {
		r.sendRaw(r.p.Client4, r.p.Server4, batch...)
		batch = batch[:0]
	}
	for i := range 110_000 {
		var p []byte
		if i < 100_000 {
			p = make([]byte, rng.IntN(1400))
		} else {
			p = make([]byte, spa.PacketSize)
		}
		for j := 0; j+8 <= len(p); j += 8 {
			binary.LittleEndian.PutUint64(p[j:], rng.Uint64())
		}
		if i >= 100_000 {
			p[0], p[1], p[2], p[3] = spa.Version, spa.SuiteX25519, 0, 0
		}
		batch = append(batch, p)
		if len(batch) == 1000 {
			flush()
			time.Sleep(5 * time.Millisecond) // stay bounded: ~200 k packets/s at most
		}
	}
	flush()
	r.alive()
	r.knock(r.p.Server4)
	r.waitOpen(r.p.Client4, r.p.Server4, 2*time.Second, "valid knock after the flood").Close()
	r.alive()
	junk := r.metric("spa", "bad length") + r.metric("spa", "bad header") + r.metric("spa", "bad mac1")
	t.Logf("junk counted: bad length %d, bad header %d, bad mac1 %d, granted %d",
		r.metric("spa", "bad length"), r.metric("spa", "bad header"), r.metric("spa", "bad mac1"), r.metric("spa", "granted"))
	if junk < 50_000 || r.metric("spa", "bad mac1") == 0 {
		t.Fatalf("only %d junk packets counted", junk)
	}
	if strings.Count(r.out.String(), "msg=refused") > 200 {
		t.Fatalf("flood produced %d log lines", strings.Count(r.out.String(), "msg=refused"))
	}
}

func TestMalformedConfigLeavesFirewallUntouched(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	before := r.p.Server.Exec(t, "nft", "list", "ruleset")
	good, _ := os.ReadFile(r.cfgPath)

	bad := strings.Replace(string(good), `allow = ["tcp/22"]`, `allow = ["tcp/22", "tcp/99999"]`, 1)
	line := 1 + strings.Count(bad[:strings.Index(bad, "tcp/99999")], "\n")
	os.WriteFile(r.cfgPath, []byte(bad), 0o644)
	out, err := r.postern("server", "-c", r.cfgPath)
	if err == nil {
		t.Fatal("daemon started with a malformed config")
	}
	want := r.cfgPath + ":" + strconv.Itoa(line) + ": client[1].allow"
	if !strings.Contains(out, want) {
		t.Fatalf("error %q does not name %q", out, want)
	}
	if out, err := r.postern("check-config", "-c", r.cfgPath); err == nil || !strings.Contains(out, want) {
		t.Fatalf("check-config: %v %s", err, out)
	}

	unknown := strings.Replace(string(good), "max_skew", "max_skw", 1)
	os.WriteFile(r.cfgPath, []byte(unknown), 0o644)
	if out, err := r.postern("server", "-c", r.cfgPath); err == nil || !strings.Contains(out, "spa.max_skw: unknown key") {
		t.Fatalf("unknown key: %v %s", err, out)
	}

	// A private key others can read stops the daemon too.
	os.WriteFile(r.cfgPath, good, 0o644)
	os.Chmod(filepath.Join(r.dir, "server.key"), 0o644)
	if out, err := r.postern("server", "-c", r.cfgPath); err == nil || !strings.Contains(out, "chmod 600") {
		t.Fatalf("world-readable key: %v %s", err, out)
	}
	if after := r.p.Server.Exec(t, "nft", "list", "ruleset"); after != before {
		t.Fatalf("firewall changed:\n%s\nto:\n%s", before, after)
	}
	os.Chmod(filepath.Join(r.dir, "server.key"), 0o600)
	if out, err := r.postern("check-config", "-c", r.cfgPath); err != nil {
		t.Fatalf("check-config on the good file: %v %s", err, out)
	}
}

func TestCleanupRemovesTable(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	r.knock(r.p.Server4, "--for", "30s")
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after the knock").Close()
	status := r.p.Server.Exec(t, posternBin, "status")
	if !strings.Contains(status, r.p.Client4.String()) || !strings.Contains(status, "tcp/22") {
		t.Fatalf("status does not show the grant:\n%s", status)
	}
	r.signal(syscall.SIGTERM)
	r.waitOpen(r.p.Client4, r.p.Server4, 200*time.Millisecond, "grant kept after SIGTERM").Close()
	r.p.Server.Exec(t, posternBin, "cleanup")
	if rs := r.p.Server.Exec(t, "nft", "list", "ruleset"); strings.Contains(rs, "postern") {
		t.Fatalf("cleanup left:\n%s", rs)
	}
	r.waitOpen(r.p.Client4b, r.p.Server4, time.Second, "after cleanup, unprotected").Close()
}

func TestRemoveOnExit(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{extra: "\n[firewall]\non_exit = \"remove\"\n"})
	r.start()
	r.knock(r.p.Server4, "--for", "30s")
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after the knock").Close()
	r.signal(syscall.SIGTERM)
	r.requireClosed(r.p.Client4, r.p.Server4, "after SIGTERM with on_exit = remove")
}

// TestUDPCapture: capture = "udp" reads knocks from an ordinary socket.
func TestUDPCapture(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{capture: "udp"})
	r.start()
	r.requireClosed(r.p.Client6, r.p.Server6, "before the knock")
	r.knock(r.p.Server6)
	r.waitOpen(r.p.Client6, r.p.Server6, time.Second, "after the knock").Close()
	r.requireClosed(r.p.Client6b, r.p.Server6, "other address")
}

// TestKnockPortSilent: the host never answers on the knock port — no ICMP
// port unreachable, which a connected UDP socket would report as
// "connection refused" — for junk and for valid knocks alike.
func TestKnockPortSilent(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	for _, to := range []netip.Addr{r.p.Server4, r.p.Server6} {
		c, err := r.p.Client.Dial("udp", netip.Addr{}, netip.AddrPortFrom(to, knockPort), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("anyone there?"))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err = c.Read(make([]byte, 64))
		c.Close()
		var ne interface{ Timeout() bool }
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("knock port on %v answered: %v (want silence)", to, err)
		}
	}
}

// TestSpoofedSourceGetsNothing: a valid knock intercepted before it reached
// the server and sent first from another address opens the port only for the
// address signed inside it, never for the sender.
func TestSpoofedSourceGetsNothing(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	alice, err := spa.ParseClientPrivateKey(mustRead(t, r.alice))
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := spa.Seal(alice, r.server.Public(), spa.Knock{Time: time.Now(), Allow: r.p.Client4,
		Ports: []port.Spec{sshPort}, Duration: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r.sendRaw(r.p.Client4b, r.p.Server4, pkt)
	r.out.WaitFor(t, 2*time.Second, "msg=granted", "src="+r.p.Client4b.String(), "allow="+r.p.Client4.String())
	r.requireClosed(r.p.Client4b, r.p.Server4, "the address that sent the intercepted knock")
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "the address signed in the knock").Close()
}

// capsOf reads the capability sets and no_new_privs from a /proc status
// file.
func capsOf(t *testing.T, status string) map[string]uint64 {
	t.Helper()
	data, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	return capsIn(t, string(data))
}

func capsIn(t *testing.T, status string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, line := range strings.Split(status, "\n") {
		name, val, ok := strings.Cut(line, ":\t")
		if !ok {
			continue
		}
		switch name {
		case "CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb":
			v, err := strconv.ParseUint(val, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			out[name] = v
		case "NoNewPrivs":
			v, _ := strconv.ParseUint(val, 10, 64)
			out[name] = v
		}
	}
	return out
}

const netAdmin = 1 << 12 // CAP_NET_ADMIN

// TestCapabilities: once its capture sockets are open every thread of the
// daemon holds CAP_NET_ADMIN and nothing else (netlink needs it for its
// whole life), its bounding set is the same, so nothing it runs can get
// more, and no_new_privs is set (it runs no commands).
func TestCapabilities(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", r.daemon.Process.Pid))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of the daemon: %v %v", tasks, err)
	}
	for _, status := range tasks {
		c := capsOf(t, status)
		if c["CapEff"] != netAdmin || c["CapPrm"] != netAdmin || c["CapBnd"] != netAdmin || c["CapInh"] != 0 ||
			c["NoNewPrivs"] != 1 {
			t.Fatalf("%s: %x", status, c)
		}
	}
	// And it still works: capture sockets were opened before the drop.
	r.knock(r.p.Server4)
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after dropping privileges").Close()
}

// A door command runs with CAP_NET_ADMIN at most (the bounding set), so a
// command cannot regain what the daemon dropped.
func TestCommandCapabilities(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true})
	out := filepath.Join(r.dir, "status")
	r.writeFile("postern.toml", fmt.Sprintf(`interface = %q
state_dir = %q
[[door]]
name = "caps"
sequence = ["tcp/7000", "tcp/8000"]
seq_timeout = "5s"
start_command = "cat /proc/self/status > %s"
`, netnstest.Interface, r.dir+"/state", out))
	r.start()
	c := capsOf(t, fmt.Sprintf("/proc/%d/status", r.daemon.Process.Pid))
	if c["CapEff"] != netAdmin || c["CapBnd"] != netAdmin {
		t.Fatalf("daemon with commands: %x", c)
	}
	for _, p := range []uint16{7000, 8000} {
		r.p.Client.Dial("tcp", r.p.Client4, netip.AddrPortFrom(r.p.Server4, p), 100*time.Millisecond)
	}
	r.out.WaitFor(t, 3*time.Second, "start command ran")
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if c := capsIn(t, string(data)); c["CapEff"]&^netAdmin != 0 || c["CapBnd"] != netAdmin {
		t.Fatalf("door command: %x", c)
	}
}

// The iptables+ipset backend with the real daemon: a grant for one address
// that expires in the kernel, also after SIGKILL.
func TestIPTablesBackend(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables", "ipset")
	r := newRig(t, rigOptions{extra: "\n[firewall]\nbackend = \"iptables\"\n"})
	r.start()
	for _, fam := range []struct{ srv, cli, other netip.Addr }{
		{r.p.Server4, r.p.Client4, r.p.Client4b}, {r.p.Server6, r.p.Client6, r.p.Client6b},
	} {
		r.requireClosed(fam.cli, fam.srv, "before the knock")
		r.knock(fam.srv, "--for", "2s")
		r.waitOpen(fam.cli, fam.srv, time.Second, "after the knock").Close()
		r.requireClosed(fam.other, fam.srv, "another address")
	}
	if out := r.p.Server.Exec(t, "ipset", "list", "postern4"); !strings.Contains(out, r.p.Client4.String()+",tcp:22 timeout") {
		t.Fatalf("grant not in ipset:\n%s", out)
	}
	r.signal(syscall.SIGKILL)
	r.waitClosed(r.p.Client4, r.p.Server4, 3*time.Second, "expiry with the daemon dead")
	r.waitClosed(r.p.Client6, r.p.Server6, 3*time.Second, "IPv6 expiry with the daemon dead")
	r.p.Server.Exec(t, posternBin, "cleanup")
	if out := r.p.Server.Exec(t, "iptables", "-S"); strings.Contains(out, "POSTERN") {
		t.Fatalf("cleanup left:\n%s", out)
	}
}

// Client ergonomics: a [[spa]] profile, postern proxy as ssh's
// ProxyCommand, postern ssh.
func TestProfilesProxySSH(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "bash")
	r := newRig(t, rigOptions{})
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	xdg := filepath.Join(r.dir, "xdg")
	os.MkdirAll(filepath.Join(xdg, "postern"), 0o700)
	profiles := filepath.Join(xdg, "postern", "client.toml")
	os.WriteFile(profiles, []byte(fmt.Sprintf(`[[spa]]
name = "office"
host = %q
key_file = %q
server_key = %q
open = ["tcp/22"]
duration = "2s"

[[spa]]
name = "keep"
host = %q
key_file = %q
server_key = %q
duration = "30s"
close_on_exit = false
`, srv, r.alice, r.server.Public(), srv, r.alice, r.server.Public())), 0o600)

	t.Run("knock --profile", func(t *testing.T) {
		if out, err := r.postern("knock", "--config", profiles, "--profile", "office"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		r.waitOpen(cli, srv, time.Second, "after knock --profile").Close()
		r.waitClosed(cli, srv, 3*time.Second, "expiry")
	})
	t.Run("proxy", func(t *testing.T) {
		mark := r.out.Mark()
		cmd := r.p.Client.Command(t.Context(), posternBin, "proxy", "--config", profiles, srv.String(), "22")
		cmd.Stdin = strings.NewReader("through the proxy\n")
		out, err := cmd.Output()
		if err != nil || string(out) != "through the proxy\n" {
			t.Fatalf("proxy: %q %v", out, err)
		}
		// The session over, the proxy closed the door behind it.
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=closed language=spa", "client=alice")
		r.requireClosed(cli, srv, "after the proxy session")
	})
	t.Run("proxy ended by ssh's SIGHUP", func(t *testing.T) {
		// ssh kills its ProxyCommand with SIGHUP as it exits, before the
		// server's end of the connection arrives.
		mark := r.out.Mark()
		cmd := r.p.Client.Command(t.Context(), posternBin, "proxy", "--config", profiles, srv.String(), "22")
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		io.WriteString(in, "session\n")
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "session\n" {
			t.Fatalf("the relay: %q %v", line, err)
		}
		cmd.Process.Signal(syscall.SIGHUP) // ip netns exec execs postern: this is its pid
		if err := cmd.Wait(); err != nil {
			t.Errorf("the proxy ended by SIGHUP: %v, want exit status 0", err)
		}
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=closed language=spa", "client=alice")
		r.requireClosed(cli, srv, "after ssh hung up on the proxy")
	})
	t.Run("ssh with a command", func(t *testing.T) {
		mark := r.out.Mark()
		out, err := r.standInSSH(xdg, "office", "-o", "BatchMode=yes", "-v", "uptime", "-a")
		// The command after the host, as ssh wants it.
		if err != nil || !strings.Contains(string(out), "ssh -o BatchMode=yes -v -4 "+srv.String()+" uptime -a connected") ||
			!strings.Contains(string(out), "runs: uptime -a") {
			t.Fatalf("postern ssh office … uptime: %v\n%s", err, out)
		}
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=closed language=spa", "client=alice")
	})
	t.Run("ssh", func(t *testing.T) {
		mark := r.out.Mark()
		out, err := r.standInSSH(xdg, "office", "-o", "BatchMode=yes")
		// One family knocked (the profile's host is an IPv4 address): ssh
		// is told so.
		if err != nil || !strings.Contains(string(out), "ssh -o BatchMode=yes -4 "+srv.String()+" connected") {
			t.Fatalf("postern ssh: %v\n%s", err, out)
		}
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=closed language=spa", "client=alice")
		r.requireClosed(cli, srv, "after the ssh session")
	})
	t.Run("ssh, close_on_exit = false", func(t *testing.T) {
		out, err := r.standInSSH(xdg, "keep")
		if err != nil || !strings.Contains(string(out), "connected") {
			t.Fatalf("postern ssh: %v\n%s", err, out)
		}
		r.waitOpen(cli, srv, time.Second, "the door left open").Close()
	})
}

// Suite 2: a server with a post-quantum hybrid key; its 1412-byte knocks
// fit one packet over IPv4 and IPv6.
func TestKnockPostQuantum(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{pq: true})
	r.start()
	sniffed := r.sniff()
	for _, fam := range []struct{ srv, cli, other netip.Addr }{
		{r.p.Server4, r.p.Client4, r.p.Client4b}, {r.p.Server6, r.p.Client6, r.p.Client6b},
	} {
		r.requireClosed(fam.cli, fam.srv, "before the knock")
		r.knock(fam.srv)
		r.waitOpen(fam.cli, fam.srv, time.Second, "after a suite-2 knock").Close()
		r.requireClosed(fam.other, fam.srv, "another address")
	}
	if pkt := <-sniffed; len(pkt) != spa.PacketSizeXWing || pkt[1] != spa.SuiteXWing {
		t.Fatalf("knock of %d bytes, suite %d", len(pkt), pkt[1])
	}
	out, err := r.postern("genkey", "--server", "--pq")
	if err != nil {
		t.Fatal(err)
	}
	if k, err := spa.ParseServerPrivateKey(out); err != nil || k.Public().Suite() != spa.SuiteXWing {
		t.Fatalf("genkey --server --pq: %v", err)
	}
}

// standInSSH runs postern ssh ARGS in the client namespace with profiles
// under xdg and, in place of ssh, a script that connects to port 22 of the
// host (its first argument after the options) and says with which
// arguments it ran and which command it would run there.
func (r *rig) standInSSH(xdg string, args ...string) ([]byte, error) {
	bin := filepath.Join(r.dir, "bin")
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "ssh"), []byte(`#!/bin/bash
args=("$@"); i=0
while [[ ${args[i]} == -* ]]; do
	case ${args[i]} in -o|-p|-l|-i|-F|-J) i=$((i+2));; *) i=$((i+1));; esac
done
host=${args[i]}; command=("${args[@]:i+1}")
exec 3<>"/dev/tcp/$host/22" && echo "ssh $* connected" || exit 255
if (( ${#command[@]} )); then echo "runs: ${command[*]}"; fi
`), 0o755)
	cmd := r.p.Client.Command(context.Background(), posternBin, append([]string{"ssh"}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "XDG_CONFIG_HOME="+xdg)
	return cmd.CombinedOutput()
}

// A server name with an IPv4 and an IPv6 address (the client namespace's
// own /etc/hosts, which ip netns exec mounts from /etc/netns/NAME/): one
// knock opens the door over both families, so `postern knock HOST && ssh
// HOST` works whichever family ssh picks; -4 knocks IPv4 only.
func TestDualStackKnock(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	etc := filepath.Join("/etc/netns", r.p.Client.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	hosts := fmt.Sprintf("127.0.0.1 localhost\n%s server.test\n%s server.test\n", r.p.Server4, r.p.Server6)
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	r.start()
	knock := func(extra ...string) string {
		t.Helper()
		args := append([]string{"knock", "-v", "--key", r.alice, "--server-key", r.server.Public().String(), "--open", "tcp/22", "--for", "30s"}, extra...)
		out, err := r.postern(append(args, "server.test")...)
		if err != nil {
			t.Fatalf("postern knock: %v\n%s", err, out)
		}
		return out
	}
	out := knock("-4")
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "IPv4 after a -4 knock").Close()
	r.out.WaitFor(t, time.Second, "msg=granted", "allow="+r.p.Client4.String())
	r.requireClosed(r.p.Client6, r.p.Server6, "IPv6 after a -4 knock")
	if strings.Count(out, "knocked ") != 1 {
		t.Fatalf("-4 knocked:\n%s", out)
	}
	out = knock()
	r.waitOpen(r.p.Client6, r.p.Server6, time.Second, "IPv6 after a dual-stack knock").Close()
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "IPv4 after a dual-stack knock").Close()
	if !strings.Contains(out, "for "+r.p.Client6.String()) || !strings.Contains(out, "for "+r.p.Client4.String()) {
		t.Fatalf("a dual-stack knock said:\n%s", out)
	}

	// postern ssh to a profile naming server.test: both families knocked,
	// so ssh gets no -4/-6 and connects whichever family it picks (a
	// stand-in ssh: bash's /dev/tcp resolves the name as ssh does).
	netnstest.Require(t, "bash")
	xdg := filepath.Join(r.dir, "xdg")
	os.MkdirAll(filepath.Join(xdg, "postern"), 0o700)
	os.WriteFile(filepath.Join(xdg, "postern", "client.toml"), []byte(fmt.Sprintf(
		"[[spa]]\nname = \"office\"\nhost = \"server.test\"\nkey_file = %q\nserver_key = %q\nopen = [\"tcp/22\"]\n"+
			"[[spa]]\nname = \"v6\"\nhost = \"server.test\"\nkey_file = %q\nserver_key = %q\nfamily = \"ipv6\"\nclose_on_exit = false\n",
		r.alice, r.server.Public(), r.alice, r.server.Public())), 0o600)
	if sshOut, err := r.standInSSH(xdg, "office"); err != nil || !strings.Contains(string(sshOut), "ssh server.test connected") {
		t.Fatalf("postern ssh to a dual-stack name: %v\n%s", err, sshOut)
	}
	// A profile's family: one knock, over IPv6, and ssh is told so.
	mark := r.out.Mark()
	if sshOut, err := r.standInSSH(xdg, "v6"); err != nil || !strings.Contains(string(sshOut), "ssh -6 server.test connected") {
		t.Fatalf("postern ssh with family = ipv6: %v\n%s", err, sshOut)
	}
	if n := strings.Count(r.out.String()[mark:], "msg=granted"); n != 1 || !strings.Contains(r.out.String()[mark:], "allow="+r.p.Client6.String()) {
		t.Fatalf("family = ipv6: %d grants:\n%s", n, r.out.String()[mark:])
	}
}

// An authenticated close request (postern knock --close, Aldaba's "close"):
// the grant goes at once — a new connection from that address is dropped —
// while the connection already made survives (established traffic is
// accepted before the drop); a replayed close is refused; a client cannot
// close a port it may not open.
func TestCloseRequest(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	closeKnock := func(ports string) {
		t.Helper()
		if out, err := r.postern("knock", "--key", r.alice, "--server-key", r.server.Public().String(), "--close", ports, srv.String()); err != nil {
			t.Fatalf("postern knock --close: %v\n%s", err, out)
		}
	}
	r.knock(srv, "--for", "60s")
	established := r.waitOpen(cli, srv, time.Second, "after the knock")
	defer established.Close()

	mark := r.out.Mark()
	sniffed := r.sniff()
	closeKnock("tcp/22")
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=closed", "language=spa", "allow="+cli.String(), "ports=tcp/22")
	r.requireClosed(cli, srv, "a new connection after the close")
	if err := echoes(established); err != nil {
		t.Fatalf("the connection made before the close: %v", err)
	}
	if live := r.p.Server.Exec(t, "nft", "list", "set", "inet", "postern", "grants4"); strings.Contains(live, cli.String()) {
		t.Fatalf("grant still in the kernel after the close:\n%s", live)
	}

	// Open again, then replay the close: refused, the door stays open.
	r.knock(srv, "--for", "60s")
	r.waitOpen(cli, srv, time.Second, "after knocking again").Close()
	mark = r.out.Mark()
	r.sendRaw(cli, srv, <-sniffed)
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", "reason=replay")
	r.waitOpen(cli, srv, time.Second, "after a replayed close").Close()

	// alice may open tcp/22 only: closing tcp/80 is refused.
	mark = r.out.Mark()
	closeKnock("tcp/80")
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", `reason="port not allowed"`)
}

// postern knock --wait: it returns once the port answers; when the door
// never opens it knocks three times in all (each knock fresh, each refused
// by the server) and then fails with a clear message.
func TestKnockWait(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	srv := r.p.Server4
	out, err := r.postern("knock", "--wait", "--key", r.alice, "--server-key", r.server.Public().String(), "--open", "tcp/22", srv.String())
	if err != nil {
		t.Fatalf("knock --wait: %v\n%s", err, out)
	}
	r.waitOpen(r.p.Client4, srv, time.Second, "after knock --wait").Close()

	mark := r.out.Mark()
	out, err = r.postern("knock", "--wait=3s", "--key", r.stranger, "--server-key", r.server.Public().String(), "--open", "tcp/22", r.p.Server6.String())
	if err == nil || !strings.Contains(out, "the door did not open") || !strings.Contains(out, "after 3 knocks") {
		t.Fatalf("knock --wait for a door that stays shut: %v\n%s", err, out)
	}
	// A port that answers with a reset tells nothing about the knock (and
	// what comes next fails): an error, not success.
	out, err = r.postern("knock", "--wait=3s", "--key", r.stranger, "--server-key", r.server.Public().String(), "--open", "tcp/23", srv.String())
	if err == nil || !strings.Contains(out, "answered with a reset") {
		t.Fatalf("knock --wait for a port that answers with a reset: %v\n%s", err, out)
	}
	deadline := time.Now().Add(2 * time.Second)
	for strings.Count(r.out.String()[mark:], "msg=refused language=spa") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the server refused %d knocks, want 3:\n%s", strings.Count(r.out.String()[mark:], "msg=refused language=spa"), r.out.String()[mark:])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// postern proxy confirms the door answers and knocks again when it does
// not: here the client's own firewall drops its first knock (a lost
// packet), the proxy's connection attempts time out, a fresh knock goes
// after a third of the wait, and the session works.
func TestProxyKnocksAgain(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	// On the link, after the socket: the knock is sent, then lost.
	r.p.Client.ExecInput(t, "table netdev lossy {\n chain out {\n  type filter hook egress device \""+netnstest.Interface+
		"\" priority 0;\n  udp dport 62201 quota until 400 bytes drop\n }\n}\n", "nft", "-f", "-")
	r.start()
	profiles := filepath.Join(r.dir, "client.toml")
	os.WriteFile(profiles, []byte(fmt.Sprintf("[[spa]]\nname = \"office\"\nhost = %q\nkey_file = %q\nserver_key = %q\n",
		r.p.Server4, r.alice, r.server.Public())), 0o600)
	mark := r.out.Mark()
	cmd := r.p.Client.Command(t.Context(), posternBin, "proxy", "--config", profiles, r.p.Server4.String(), "22")
	cmd.Stdin = strings.NewReader("after a lost knock\n")
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "after a lost knock\n" {
		t.Fatalf("proxy: %q %v", out, err)
	}
	if n := strings.Count(r.out.String()[mark:], "msg=granted language=spa"); n != 1 {
		t.Fatalf("%d grants, want 1 (the first knock was dropped on the client):\n%s", n, r.out.String()[mark:])
	}
}

// postern proxy over a path whose round trip is longer than its first
// connection attempt waits (the router holds each packet 250 ms: 500 ms
// there and back): the attempts grow, and it connects.
func TestProxyOverSlowPath(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{delay: 250 * time.Millisecond})
	// The path is slow: a refused connection takes a round trip.
	start := time.Now()
	if _, err := r.p.Client.Dial("tcp", netip.Addr{}, netip.AddrPortFrom(r.p.Server4, 7), 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("port 7: %v, want a refusal", err)
	}
	if rtt := time.Since(start); rtt < 500*time.Millisecond {
		t.Fatalf("round trip %v: the path is not slow", rtt)
	}
	r.start()
	profiles := filepath.Join(r.dir, "client.toml")
	os.WriteFile(profiles, []byte(fmt.Sprintf("[[spa]]\nname = \"far\"\nhost = %q\nkey_file = %q\nserver_key = %q\n",
		r.p.Server4, r.alice, r.server.Public())), 0o600)
	cmd := r.p.Client.Command(t.Context(), posternBin, "proxy", "--config", profiles, r.p.Server4.String(), "22")
	cmd.Stdin = strings.NewReader("over a slow path\n")
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "over a slow path\n" {
		t.Fatalf("proxy: %q %v", out, err)
	}
}

// profile export → profile import on a fresh HOME: the imported profile
// knocks the door open; the URI carries no private key, and the server
// key travels as the key even when the profile named a file.
func TestProfileExportImport(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	srv := r.p.Server4
	from := filepath.Join(r.dir, "from")
	os.MkdirAll(from, 0o700)
	serverKeyFile := filepath.Join(from, "server.pub")
	os.WriteFile(serverKeyFile, []byte(r.server.Public().String()+"\n"), 0o644)
	profiles := filepath.Join(from, "client.toml")
	os.WriteFile(profiles, []byte(fmt.Sprintf(`[[spa]]
name = "office"
host = %q
key_file = %q
server_key = %q
open = ["tcp/22"]
family = "ipv4"
duration = "20s"
`, srv, r.alice, serverKeyFile)), 0o600)
	out, err := r.postern("profile", "export", "--config", profiles, "office")
	if err != nil {
		t.Fatalf("profile export: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	uri := lines[len(lines)-1]
	key, _ := os.ReadFile(r.alice)
	u, err := url.Parse(uri)
	if err != nil || !strings.HasPrefix(uri, "postern://knock?v=1&") || strings.Contains(uri, strings.TrimSpace(string(key))) ||
		strings.Contains(uri, "key_file") || u.Query().Get("server_key") != r.server.Public().String() {
		t.Fatalf("exported %q (%v)", uri, err)
	}
	if out, err := r.postern("profile", "export", "--qr", "--config", profiles, "office"); err != nil || strings.Count(out, "\n") < 20 {
		t.Fatalf("profile export --qr: %v\n%s", err, out)
	}

	// A fresh home: its own key file (here alice's, copied), nothing else.
	home := filepath.Join(r.dir, "fresh", "postern")
	os.MkdirAll(home, 0o700)
	os.WriteFile(filepath.Join(home, "client.key"), key, 0o600)
	fresh := filepath.Join(home, "client.toml")
	if out, err := r.postern("profile", "import", "--config", fresh, "--name", "work", uri); err != nil {
		t.Fatalf("profile import: %v\n%s", err, out)
	}
	if out, err := r.postern("profile", "import", "--config", fresh, "--name", "work", uri); err == nil {
		t.Fatalf("a second import under the same name: %s", out)
	}
	r.requireClosed(r.p.Client4, srv, "before the imported profile knocks")
	if out, err := r.postern("knock", "--config", fresh, "--profile", "work"); err != nil {
		t.Fatalf("knock --profile work: %v\n%s", err, out)
	}
	r.waitOpen(r.p.Client4, srv, time.Second, "after a knock with the imported profile").Close()
	r.out.WaitFor(t, time.Second, "msg=granted", "duration=20s")
}
