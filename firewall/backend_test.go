package firewall_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/postern/postern/firewall"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/port"
)

var ssh = port.Spec{Proto: port.TCP, Num: 22}

// nftIn returns a backend bound to the namespace's nftables.
func nftIn(t *testing.T, ns *netnstest.NS) *firewall.NFTables {
	t.Helper()
	f, err := os.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	return firewall.NewNFTables(c)
}

// Reachability probes. A dropped SYN is a timeout however busy the machine
// is, so a probe that expects "closed" needs no long wait; one that expects
// "open" gets a generous timeout so that load cannot fail it.
const (
	expectClosed = 300 * time.Millisecond
	expectOpen   = 3 * time.Second
)

func reachable(p *netnstest.Pair, from, to netip.Addr, timeout time.Duration) bool {
	c, err := p.Client.Dial("tcp", from, netip.AddrPortFrom(to, 22), timeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func echo(t *testing.T, c net.Conn) bool {
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	_, err := io.ReadFull(c, buf)
	return err == nil && string(buf) == "ping"
}

func TestNFTablesInNamespace(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "nft")
	p := netnstest.NewPair(t)
	fw := nftIn(t, p.Server)
	defer fw.Close()
	testBackend(t, p, fw, backendChecks{
		installed: func() string { return p.Server.Exec(t, "nft", "list", "table", "inet", "postern") },
		rules: []string{
			"ip saddr . meta l4proto . th dport @grants4 accept",
			"ip6 saddr . meta l4proto . th dport @grants6 accept",
			"meta l4proto . th dport @protected drop",
			"tcp dport 20000-20009 drop",
			"ct state established,related accept",
		},
		leftovers: func() string {
			if out := p.Server.Exec(t, "nft", "list", "ruleset"); strings.Contains(out, "postern") {
				return out
			}
			return ""
		},
		tampers: map[string]func(){
			"flush ruleset":   func() { p.Server.Exec(t, "nft", "flush", "ruleset") },
			"delete table":    func() { p.Server.Exec(t, "nft", "delete", "table", "inet", "postern") },
			"flush chain":     func() { p.Server.Exec(t, "nft", "flush", "chain", "inet", "postern", "input") },
			"flush protected": func() { p.Server.Exec(t, "nft", "flush", "set", "inet", "postern", "protected") },
		},
	})
}

func TestIPTablesInNamespace(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables", "ip6tables", "ipset")
	p := netnstest.NewPair(t)
	fw := firewall.NewIPTables(func(name string, args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", p.Server.Name, name}, args...)...)
	})
	testBackend(t, p, fw, backendChecks{
		installed: func() string {
			return p.Server.Exec(t, "iptables", "-S") + p.Server.Exec(t, "ip6tables", "-S") + p.Server.Exec(t, "ipset", "list", "-n")
		},
		rules: []string{
			"-A INPUT -j POSTERN",
			"-A POSTERN -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
			"-A POSTERN -m set --match-set postern4 src,dst -j RETURN",
			"-A POSTERN -m set --match-set postern6 src,dst -j RETURN",
			"-A POSTERN -p tcp -m tcp --dport 22 -m comment --comment postern-protected -j DROP",
			"-A POSTERN -p tcp -m tcp --dport 20000:20009 -j DROP",
			"postern4", "postern6",
		},
		leftovers: func() string {
			out := p.Server.Exec(t, "iptables", "-S") + p.Server.Exec(t, "ip6tables", "-S") + p.Server.Exec(t, "ipset", "list", "-n")
			if strings.Contains(out, "POSTERN") || strings.Contains(out, "postern") {
				return out
			}
			return ""
		},
		tampers: map[string]func(){
			"flush all chains": func() { p.Server.Exec(t, "iptables", "-F"); p.Server.Exec(t, "ip6tables", "-F") },
			"delete chain and sets": func() {
				for _, c := range []string{"iptables", "ip6tables"} {
					p.Server.Exec(t, c, "-D", "INPUT", "-j", "POSTERN")
					p.Server.Exec(t, c, "-F", "POSTERN")
					p.Server.Exec(t, c, "-X", "POSTERN")
				}
				p.Server.Exec(t, "ipset", "destroy", "postern4")
				p.Server.Exec(t, "ipset", "destroy", "postern6")
			},
			"restore without postern": func() {
				p.Server.ExecInput(t, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "iptables-restore")
			},
		},
	})
}

// backendChecks are the backend-specific parts of testBackend.
type backendChecks struct {
	installed func() string     // the backend's rules as its tools print them
	rules     []string          // lines that must be there
	leftovers func() string     // non-empty: what Cleanup left behind
	tampers   map[string]func() // ways of removing postern's rules behind its back
}

// testBackend runs the same checks against any kernel backend: closed
// before a grant, open for the granted address only, re-Setup keeps live
// grants, kernel expiry with established connections kept, extend never
// shortens (also when the kernel lost the grant), restore after tampering,
// revoke, cleanup. The backend is used through a Keeper, as the daemon does.
func testBackend(t *testing.T, p *netnstest.Pair, b firewall.Backend, c backendChecks) {
	p.Server.Echo(t, "[::]:22")
	fw := firewall.NewKeeper(b, nil)
	for _, fam := range []struct {
		name                string
		server, client, alt netip.Addr
	}{{"ipv4", p.Server4, p.Client4, p.Client4b}, {"ipv6", p.Server6, p.Client6, p.Client6b}} {
		t.Run(fam.name, func(t *testing.T) {
			if err := fw.Cleanup(); err != nil {
				t.Fatal(err)
			}
			if !reachable(p, fam.client, fam.server, expectOpen) {
				t.Fatal("port closed before postern was set up: the test setup is wrong")
			}
			rules := firewall.Rules{Protected: []port.Spec{ssh}, Knock: []port.Spec{{Proto: port.UDP, Num: 62201}},
				KnockRanges: []firewall.PortRange{{Proto: port.TCP, Lo: 20000, Hi: 20009}}}
			if err := fw.Setup(rules); err != nil {
				t.Fatal(err)
			}
			if reachable(p, fam.client, fam.server, expectClosed) {
				t.Fatal("protected port reachable without a grant")
			}
			for _, pt := range []uint16{20000, 20009} {
				if _, err := p.Client.Dial("tcp", fam.client, netip.AddrPortFrom(fam.server, pt), 200*time.Millisecond); !isTimeout(err) {
					t.Fatalf("knock range port %d: %v, want a dropped SYN", pt, err)
				}
			}
			if _, err := p.Client.Dial("tcp", fam.client, netip.AddrPortFrom(fam.server, 20010), expectOpen); isTimeout(err) {
				t.Fatal("port 20010, outside the knock range, dropped")
			}
			if err := fw.Grant([]firewall.Grant{{Addr: fam.client, Port: ssh, Timeout: 2 * time.Second}}); err != nil {
				t.Fatal(err)
			}
			if !reachable(p, fam.client, fam.server, expectOpen) {
				t.Fatal("granted address cannot connect")
			}
			if reachable(p, fam.alt, fam.server, expectClosed) {
				t.Fatal("another address of the same host can connect")
			}
			established, err := p.Client.Dial("tcp", fam.client, netip.AddrPortFrom(fam.server, 22), expectOpen)
			if err != nil {
				t.Fatal(err)
			}
			defer established.Close()
			gs, err := fw.List()
			if err != nil || len(gs) != 1 || gs[0].Addr != fam.client || gs[0].Port != ssh ||
				gs[0].Timeout <= 0 || gs[0].Timeout > 2*time.Second {
				t.Fatalf("List = %v, %v", gs, err)
			}
			// Setup again (a restart): the live grant must survive.
			if err := fw.Setup(rules); err != nil {
				t.Fatal(err)
			}
			if !reachable(p, fam.client, fam.server, expectOpen) {
				t.Fatal("Setup dropped a live grant")
			}
			time.Sleep(2200 * time.Millisecond)
			if reachable(p, fam.client, fam.server, expectClosed) {
				t.Fatal("grant did not expire")
			}
			if !echo(t, established) {
				t.Fatal("established connection did not survive the grant's expiry")
			}
		})
	}

	t.Run("extend never shortens", func(t *testing.T) {
		g := firewall.Grant{Addr: p.Client4, Port: ssh, Timeout: 10 * time.Second}
		if err := fw.Grant([]firewall.Grant{g}); err != nil {
			t.Fatal(err)
		}
		g.Timeout = time.Second
		if err := fw.Grant([]firewall.Grant{g}); err != nil {
			t.Fatal(err)
		}
		g.Timeout = 20 * time.Second
		if err := fw.Grant([]firewall.Grant{g}); err != nil {
			t.Fatal(err)
		}
		gs, _ := fw.List()
		if len(gs) != 1 || gs[0].Timeout < 15*time.Second {
			t.Fatalf("after 10s, 1s, 20s grants: %v", gs)
		}
		// Removed behind the keeper's back: a shorter re-grant still
		// installs it, because the kernel, not the ledger, is the truth.
		if err := b.Revoke([]firewall.Grant{g}); err != nil {
			t.Fatal(err)
		}
		g.Timeout = 5 * time.Second
		if err := fw.Grant([]firewall.Grant{g}); err != nil {
			t.Fatal(err)
		}
		if gs, _ := fw.List(); len(gs) != 1 || gs[0].Timeout > 5*time.Second {
			t.Fatalf("re-grant after removal behind the keeper's back: %v", gs)
		}
		if err := fw.Revoke([]firewall.Grant{g, {Addr: p.Client6b, Port: ssh}}); err != nil {
			t.Fatalf("revoke (one of them never granted): %v", err)
		}
		if reachable(p, p.Client4, p.Server4, expectClosed) {
			t.Fatal("revoked grant still open")
		}
	})

	t.Run("restore after tampering", func(t *testing.T) {
		rules := firewall.Rules{Protected: []port.Spec{ssh}, Knock: []port.Spec{{Proto: port.UDP, Num: 62201}},
			KnockRanges: []firewall.PortRange{{Proto: port.TCP, Lo: 20000, Hi: 20009}}}
		if err := fw.Setup(rules); err != nil {
			t.Fatal(err)
		}
		if d, err := fw.Check(); err != nil || !d.Intact() {
			t.Fatalf("Check right after Setup: %v, %v", d, err)
		}
		for name, tamper := range c.tampers {
			g := firewall.Grant{Addr: p.Client4, Port: ssh, Timeout: 20 * time.Second, Name: "alice"}
			if err := fw.Grant([]firewall.Grant{g}); err != nil {
				t.Fatal(err)
			}
			tamper()
			d, err := fw.Check()
			if err != nil || d.Intact() {
				t.Fatalf("%s: Check = %v, %v; want damage found and restored", name, d, err)
			}
			if d, err := fw.Check(); err != nil || !d.Intact() {
				t.Fatalf("%s: second Check = %v, %v; want intact", name, d, err)
			}
			if reachable(p, p.Client4b, p.Server4, expectClosed) {
				t.Fatalf("%s: protected port open to another address after restore", name)
			}
			if !reachable(p, p.Client4, p.Server4, expectOpen) {
				t.Fatalf("%s: granted address shut out after restore", name)
			}
			gs, _ := fw.List()
			if len(gs) != 1 || gs[0].Timeout > 20*time.Second || gs[0].Name != "alice" {
				t.Fatalf("%s: grants after restore: %+v", name, gs)
			}
			if ps, ok, err := fw.Installed(); err != nil || !ok || len(ps) != 1 || ps[0] != ssh {
				t.Fatalf("%s: Installed = %v %v %v", name, ps, ok, err)
			}
			if err := fw.Revoke(gs); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("cleanup", func(t *testing.T) {
		out := c.installed()
		for _, want := range c.rules {
			if !strings.Contains(out, want) {
				t.Errorf("rules lack %q:\n%s", want, out)
			}
		}
		if err := fw.Cleanup(); err != nil {
			t.Fatal(err)
		}
		if err := fw.Cleanup(); err != nil {
			t.Fatalf("second cleanup: %v", err)
		}
		if left := c.leftovers(); left != "" {
			t.Fatalf("left after cleanup:\n%s", left)
		}
		if !reachable(p, p.Client4, p.Server4, expectOpen) {
			t.Fatal("port still closed after cleanup")
		}
	})
}

// A ruleset flushed while thousands of grants are live: the keeper puts
// every one back. One netlink transaction cannot carry them all (the
// socket's buffers refuse it), so the backend batches; before it did, the
// restore failed and every holder of a grant was locked out.
func TestNFTablesRestoresThousandsOfGrants(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "nft")
	ns := netnstest.New(t, "many")
	f, err := os.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	fw := firewall.NewNFTables(c)
	defer fw.Close()
	k := firewall.NewKeeper(fw, nil)
	if err := k.Setup(firewall.Rules{Protected: []port.Spec{ssh}}); err != nil {
		t.Fatal(err)
	}
	const n = 5000
	gs := make([]firewall.Grant, n)
	for i := range gs {
		gs[i] = firewall.Grant{Addr: benchAddr(i), Port: ssh, Timeout: time.Hour, Name: "many"}
	}
	if err := k.Grant(gs); err != nil {
		t.Fatalf("granting %d at once: %v", n, err)
	}
	ns.Exec(t, "nft", "flush", "ruleset")
	if d, err := k.Check(); err != nil || !d.GrantsLost {
		t.Fatalf("check after flush: %+v, %v", d, err)
	}
	live, err := k.List()
	if err != nil || len(live) != n {
		t.Fatalf("%d grants live after the restore, want %d (%v)", len(live), n, err)
	}
}

// A restore cuts the connections that slipped in while the rules were
// gone (to a protected port, no live grant covering them) and leaves the
// rest: a granted client's, and one that began before the rules went.
func TestRestoreCutsConnectionsMadeWhileTheRulesWereGone(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "nft")
	p := netnstest.NewPair(t)
	p.Server.Echo(t, "[::]:22")
	k := firewall.NewKeeper(nftIn(t, p.Server), nil)
	defer k.Close()
	ns, err := os.Open(p.Server.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	k.SetSweeper(firewall.ConntrackSweeperIn(int(ns.Fd()), func() []netip.Addr { return []netip.Addr{p.Server4, p.Server6} }))
	if err := k.Setup(firewall.Rules{Protected: []port.Spec{ssh}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Server.Do(firewall.EnableConntrackTimestamps); err != nil {
		t.Fatal(err)
	}
	if err := k.Grant([]firewall.Grant{{Addr: p.Client4, Port: ssh, Timeout: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	dial := func(from netip.Addr) net.Conn {
		t.Helper()
		c, err := p.Client.Dial("tcp", from, netip.AddrPortFrom(p.Server4, 22), expectOpen)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	granted := dial(p.Client4)
	// An older connection of B, made while B had a grant that is gone now:
	// it began before the rules went, so it did not slip in.
	k.Grant([]firewall.Grant{{Addr: p.Client4b, Port: ssh, Timeout: time.Minute}})
	older := dial(p.Client4b)
	k.Revoke([]firewall.Grant{{Addr: p.Client4b, Port: ssh}})
	time.Sleep(200 * time.Millisecond) // it must begin more than the sweep's margin before the last audit
	if d, err := k.Check(); err != nil || !d.Intact() {
		t.Fatalf("Check = %+v, %v", d, err)
	}
	// A distribution's ruleset that tracks connections (were nothing to
	// track them, the restored rules would not see the connection that
	// slipped in as established, and it would die by itself).
	p.Server.ExecInput(t, "flush ruleset\ntable inet filter { chain input { type filter hook input priority filter; "+
		"policy accept; ct state established,related accept; }; }\n", "nft", "-f", "-")
	slipped := dial(p.Client4b) // the window: nothing closes tcp/22
	if !echo(t, slipped) {
		t.Fatal("the connection made while the rules were gone does not work to begin with")
	}
	var d firewall.Damage
	if d, err = k.Check(); err != nil || !d.GrantsLost {
		t.Fatalf("Check after the flush = %+v, %v", d, err)
	}
	if d.Cut != 1 {
		t.Errorf("the restore cut %d connections, want 1", d.Cut)
	}
	if echo(t, slipped) {
		t.Error("the connection made while the rules were gone survived the restore")
	}
	if !echo(t, granted) {
		t.Error("the granted client's connection was cut")
	}
	if !echo(t, older) {
		t.Error("a connection older than the window was cut")
	}
	if reachable(p, p.Client4b, p.Server4, expectClosed) {
		t.Error("B can connect after the restore")
	}
}

// Grants with a lifetime, against the real kernel: a one-shot grant lets
// in one connection, which goes on, and no second; an idle grant lives
// while its connection carries traffic and ends idle after the last
// packet; its duration ends it regardless.
func TestNFTablesLifetimes(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "nft")
	p := netnstest.NewPair(t)
	fw := nftIn(t, p.Server)
	defer fw.Close()
	testLifetimes(t, p, fw)
	testLifetimesStayGone(t, p, fw)
}

// The same with iptables and ipset: counters count the connections, the
// SET target refreshes idle elements.
func TestIPTablesLifetimes(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables", "ip6tables", "ipset")
	p := netnstest.NewPair(t)
	fw := firewall.NewIPTables(func(name string, args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", p.Server.Name, name}, args...)...)
	})
	defer fw.Cleanup()
	testLifetimes(t, p, fw)

	testLifetimesStayGone(t, p, fw)
}

// testLifetimesStayGone: rules narrowed by a reload (fewer connections,
// an idle duration gone), what is listed then revoked, the old rules back:
// nothing granted under the old rules comes back, revoked or not.
func testLifetimesStayGone(t *testing.T, p *netnstest.Pair, fw firewall.Backend) {
	t.Helper()
	wide := firewall.Rules{Protected: []port.Spec{ssh}, Connections: 2, Idle: []time.Duration{2 * time.Second}}
	if err := fw.Setup(wide); err != nil {
		t.Fatal(err)
	}
	two := firewall.Grant{Addr: p.Client4, Port: ssh, Timeout: time.Minute, Name: "spa:alice"}
	two.Connections = 2
	idle := firewall.Grant{Addr: p.Client4b, Port: ssh, Timeout: time.Minute, Name: "spa:bob"}
	idle.Idle = 2 * time.Second
	if err := fw.Grant([]firewall.Grant{two, idle}); err != nil {
		t.Fatal(err)
	}
	if err := fw.Setup(firewall.Rules{Protected: []port.Spec{ssh}, Connections: 1, Idle: []time.Duration{3 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	listed, err := fw.List()
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.Revoke(listed); err != nil {
		t.Fatalf("revoking %+v under the narrower rules: %v", listed, err)
	}
	if err := fw.Setup(wide); err != nil {
		t.Fatal(err)
	}
	if gs, _ := fw.List(); len(gs) != 0 {
		t.Errorf("back after the old rules returned: %+v", gs)
	}
	for _, from := range []netip.Addr{p.Client4, p.Client4b} {
		if reachable(p, from, p.Server4, expectClosed) {
			t.Errorf("%v gets in again on a grant of the old rules", from)
		}
	}
}

func testLifetimes(t *testing.T, p *netnstest.Pair, fw firewall.Backend) {
	p.Server.Echo(t, "[::]:22")
	idle := 2 * time.Second
	rules := firewall.Rules{Protected: []port.Spec{ssh}, Connections: 2, Idle: []time.Duration{idle}}
	if err := fw.Setup(rules); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Audit(rules); err != nil || len(d.What) > 0 {
		t.Fatalf("the audit of the rules just set up: %v %v", d.What, err)
	}
	once := firewall.Grant{Addr: p.Client4, Port: ssh, Timeout: time.Minute, Name: "spa:alice"}
	once.Connections = 1
	if err := fw.Grant([]firewall.Grant{once}); err != nil {
		t.Fatal(err)
	}
	if gs, _ := fw.List(); len(gs) != 1 || gs[0].Connections != 1 {
		t.Fatalf("listed %+v, want the one-shot grant", gs)
	}
	first, err := p.Client.Dial("tcp", p.Client4, netip.AddrPortFrom(p.Server4, 22), expectOpen)
	if err != nil {
		t.Fatalf("the first connection of a one-shot grant: %v", err)
	}
	defer first.Close()
	if reachable(p, p.Client4, p.Server4, expectClosed) {
		t.Error("a second connection got in on a one-shot grant")
	}
	if !echo(t, first) {
		t.Error("the connection that used the grant does not go on")
	}
	if gs, _ := fw.List(); len(gs) != 0 {
		t.Errorf("a consumed grant is still listed: %+v", gs)
	}

	// Two connections: each new one takes a slot; the third is refused.
	two := once
	two.Connections = 2
	if err := fw.Grant([]firewall.Grant{two}); err != nil {
		t.Fatal(err)
	}
	if gs, _ := fw.List(); len(gs) != 1 || gs[0].Connections != 2 {
		t.Fatalf("listed %+v, want one grant with 2 connections left", gs)
	}
	for n := range 2 {
		c, err := p.Client.Dial("tcp", p.Client4, netip.AddrPortFrom(p.Server4, 22), expectOpen)
		if err != nil {
			t.Fatalf("connection %d of 2: %v", n+1, err)
		}
		defer c.Close()
		if gs, _ := fw.List(); len(gs) != 1-n || (n == 0 && gs[0].Connections != 1) {
			t.Errorf("after connection %d of 2, listed %+v", n+1, gs)
		}
	}
	if reachable(p, p.Client4, p.Server4, expectClosed) {
		t.Error("a third connection got in on a grant for two")
	}
	three := once
	three.Connections = 3
	if err := fw.Grant([]firewall.Grant{three}); err == nil {
		t.Error("a grant for 3 connections was accepted by rules set up for 2")
	}

	// Idle: 2 s idle within a 10 s cap, for B.
	g := firewall.Grant{Addr: p.Client4b, Port: ssh, Timeout: 10 * time.Second, Name: "spa:bob"}
	g.Idle = idle
	start := time.Now()
	if err := fw.Grant([]firewall.Grant{g}); err != nil {
		t.Fatal(err)
	}
	busy, err := p.Client.Dial("tcp", p.Client4b, netip.AddrPortFrom(p.Server4, 22), expectOpen)
	if err != nil {
		t.Fatalf("an idle grant's first connection: %v", err)
	}
	for time.Since(start) < 3500*time.Millisecond { // past idle, kept by traffic
		if !echo(t, busy) {
			t.Fatal("the busy connection broke")
		}
		time.Sleep(300 * time.Millisecond)
	}
	if !reachable(p, p.Client4b, p.Server4, expectOpen) {
		t.Fatal("a new connection was refused while the grant was in use")
	}
	busy.Close()
	// No traffic now: the grant ends idle after the last packet, well
	// before its cap. (Probing meanwhile would be traffic: a connection
	// that gets in keeps the grant alive, as it should.)
	time.Sleep(idle + time.Second) // the subject: idle
	if reachable(p, p.Client4b, p.Server4, expectClosed) {
		t.Fatalf("the idle grant did not end %v after the traffic stopped (cap 10s, %v since the grant)", idle+time.Second,
			time.Since(start).Round(100*time.Millisecond))
	}

	// The cap ends a busy grant.
	g.Timeout = 3 * time.Second
	start = time.Now()
	if err := fw.Grant([]firewall.Grant{g}); err != nil {
		t.Fatal(err)
	}
	busy, err = p.Client.Dial("tcp", p.Client4b, netip.AddrPortFrom(p.Server4, 22), expectOpen)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for time.Since(start) < 3500*time.Millisecond {
		echo(t, busy)
		time.Sleep(300 * time.Millisecond)
	}
	if reachable(p, p.Client4b, p.Server4, expectClosed) {
		t.Fatal("a new connection got in after the idle grant's cap")
	}
	if !echo(t, busy) {
		t.Error("the connection made within the cap was cut")
	}
}
