package firewall_test

import (
	"bufio"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/firewall"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/port"
)

// whoami connects from the client (from its address from) to to and returns
// what the service there saw as the source, or "" if nothing answered.
func whoami(g *netnstest.Gateway, from netip.Addr, to netip.AddrPort, timeout time.Duration) string {
	c, err := g.Client.Dial("tcp", from, to, timeout)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

func TestNFTablesGateway(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "nft")
	g := netnstest.NewGateway(t)
	fw := firewall.NewKeeper(nftIn(t, g.Server), nil)
	defer fw.Close()
	testGateway(t, g, fw, true)
	// The configuration drops the gateway: its part goes, the input part
	// stays, and the audit finds nothing missing.
	if err := fw.Setup(firewall.Rules{Protected: []port.Spec{ssh}}); err != nil {
		t.Fatal(err)
	}
	if out := g.Server.Exec(t, "nft", "list", "table", "inet", "postern"); strings.Contains(out, "hook forward") ||
		strings.Contains(out, "fwd4") || !strings.Contains(out, "hook input") {
		t.Errorf("after the gateway was dropped:\n%s", out)
	}
	if d, err := fw.Check(); err != nil || !d.Intact() {
		t.Errorf("audit without a gateway: %+v %v", d, err)
	}
	if got := whoami(g, g.Client4, netip.AddrPortFrom(g.Inside4, 22), expectOpen); got != g.Client4.String() {
		t.Errorf("the forward path still closed after the gateway was dropped: %q", got)
	}
}

// testGateway checks forwarded grants through a real gateway: closed
// destinations, grants for one address, DNAT, masquerade and SNAT, expiry
// and revocation in the kernel, and their restoration after a flush.
func testGateway(t *testing.T, g *netnstest.Gateway, fw *firewall.Keeper, published bool) {
	snatAddr := netip.MustParseAddr("10.77.1.9")
	g.Server.IP(t, "addr", "add", snatAddr.String()+"/24", "dev", netnstest.InsideInterface)
	g.Inside.Whoami(t, ":22")
	g.Inside.Echo(t, ":7")
	in4 := netip.AddrPortFrom(g.Inside4, 22)
	in6 := netip.AddrPortFrom(g.Inside6, 22)
	// Reachable before postern closes it: the topology works.
	if got := whoami(g, g.Client4, in4, expectOpen); got != g.Client4.String() {
		t.Fatalf("before setup, the inside host saw %q", got)
	}
	rules := firewall.Rules{Protected: []port.Spec{ssh}, Published: published,
		Forwarded: []firewall.Destination{{Addr: g.Inside4, Port: ssh}, {Addr: g.Inside6, Port: ssh}, {Addr: g.Inside4, Port: echoPort}}}
	if err := fw.Setup(rules); err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.AddrPort{in4, in6} {
		from := g.Client4
		if to.Addr().Is6() {
			from = g.Client6
		}
		if got := whoami(g, from, to, expectClosed); got != "" {
			t.Fatalf("%v reachable before any grant (saw %q)", to, got)
		}
	}

	grants := []firewall.Grant{
		{Addr: g.Client4, To: g.Inside4, Port: ssh, Timeout: time.Minute, Name: "alice"},
		{Addr: g.Client4, To: g.Inside4, Port: echoPort, Timeout: time.Minute, Name: "alice"},
		{Addr: g.Client6, To: g.Inside6, Port: ssh, Timeout: time.Minute, Name: "alice"},
	}
	if err := fw.Grant(grants); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4, in4, expectOpen); got != g.Client4.String() {
		t.Errorf("granted IPv4 forward: inside saw %q", got)
	}
	if got := whoami(g, g.Client6, in6, expectOpen); got != g.Client6.String() {
		t.Errorf("granted IPv6 forward: inside saw %q", got)
	}
	if got := whoami(g, g.Client4b, in4, expectClosed); got != "" {
		t.Errorf("another address reached the inside host: %q", got)
	}
	live, err := fw.List()
	if err != nil {
		t.Fatal(err)
	}
	if n := countForwarded(live, g.Client4, g.Inside4); n != 2 {
		t.Errorf("List: %d forwarded grants for %v, want 2: %v", n, g.Client4, live)
	}

	// The ruleset flushed: the Keeper puts the forward path back, grants too.
	g.Server.Exec(t, "nft", "flush", "ruleset")
	if d, err := fw.Check(); err != nil || d.Intact() || !d.GrantsLost {
		t.Fatalf("check after flush: %+v %v", d, err)
	}
	if got := whoami(g, g.Client4, in4, expectOpen); got != g.Client4.String() {
		t.Errorf("after restore: inside saw %q", got)
	}
	if got := whoami(g, g.Client4b, in4, expectClosed); got != "" {
		t.Errorf("after restore another address got in: %q", got)
	}
	// A connection made under the grant outlives it.
	held, err := g.Client.Dial("tcp", g.Client4, netip.AddrPortFrom(g.Inside4, 7), expectOpen)
	if err != nil {
		t.Fatalf("echo through the grant: %v", err)
	}
	defer held.Close()
	if err := fw.Revoke(grants); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4, in4, expectClosed); got != "" {
		t.Errorf("revoked forward still open: %q", got)
	}
	if !echo(t, held) {
		t.Error("an established forwarded connection was cut by the revoke")
	}

	// DNAT: the gateway's port 2222 leads to the inside host's 22, for the
	// granted address only.
	dnat := firewall.Grant{Addr: g.Client4, To: g.Inside4, Port: ssh, External: 2222, Timeout: 2 * time.Second, Name: "bob"}
	ext := netip.AddrPortFrom(g.Server4, 2222)
	if got := whoami(g, g.Client4, ext, expectClosed); got != "" {
		t.Fatalf("port 2222 answered before the grant: %q", got)
	}
	if err := fw.Grant([]firewall.Grant{dnat}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4, ext, expectOpen); got != g.Client4.String() {
		t.Errorf("DNAT grant: inside saw %q", got)
	}
	if got := whoami(g, g.Client4b, ext, expectClosed); got != "" {
		t.Errorf("DNAT reached the inside host from another address: %q", got)
	}
	// A grant through the gateway's port is not a grant of the inside
	// host's port itself: going there directly stays closed.
	if got := whoami(g, g.Client4, in4, expectClosed); got != "" {
		t.Errorf("a DNAT grant also opened the inside host's port directly: %q", got)
	}
	live, _ = fw.List()
	if !containsGrant(live, dnat) {
		t.Errorf("List lost the DNAT: %v", live)
	}
	// Kernel expiry: nobody revokes it.
	deadline := time.Now().Add(10 * time.Second)
	for whoami(g, g.Client4, ext, expectClosed) != "" {
		if time.Now().After(deadline) {
			t.Fatal("DNAT grant did not expire")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Masquerade and SNAT: the inside host sees the gateway.
	masq := firewall.Grant{Addr: g.Client4, To: g.Inside4, Port: ssh, External: 2222, Masquerade: true, Timeout: time.Minute}
	if err := fw.Grant([]firewall.Grant{masq}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4, ext, expectOpen); got != g.Gateway4.String() {
		t.Errorf("masqueraded: inside saw %q, want the gateway's %v", got, g.Gateway4)
	}
	snat := firewall.Grant{Addr: g.Client4b, To: g.Inside4, Port: ssh, SNAT: snatAddr, Timeout: time.Minute}
	if err := fw.Grant([]firewall.Grant{snat}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4b, in4, expectOpen); got != snatAddr.String() {
		t.Errorf("SNAT: inside saw %q, want %v", got, snatAddr)
	}
	live, _ = fw.List()
	if !containsGrant(live, masq) || !containsGrant(live, snat) {
		t.Errorf("List: want the masquerade and SNAT grants, got %v", live)
	}
	if err := fw.Revoke([]firewall.Grant{masq, snat}); err != nil {
		t.Fatal(err)
	}

	// Forward-all (fwknop's FORWARD_ALL): every port of every inside host,
	// here masqueraded; and everything sent to the gateway DNATed inside.
	if got := whoami(g, g.Client4b, in4, expectClosed); got != "" {
		t.Fatalf("revoked SNAT grant still open: %q", got)
	}
	all := firewall.Grant{Addr: g.Client4b, All: true, Masquerade: true, Timeout: time.Minute}
	dnatAll := firewall.Grant{Addr: g.Client4, All: true, To: g.Inside4, Timeout: time.Minute}
	if err := fw.Grant([]firewall.Grant{all, dnatAll}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4b, in4, expectOpen); got != g.Gateway4.String() {
		t.Errorf("forward-all masqueraded: inside saw %q, want %v", got, g.Gateway4)
	}
	if got := whoami(g, g.Client4, netip.AddrPortFrom(g.Server4, 22), expectOpen); got != g.Client4.String() {
		t.Errorf("forward-all DNAT: the gateway's port 22 led to %q", got)
	}
	if got := whoami(g, g.Client6, in6, expectClosed); got != "" {
		t.Errorf("forward-all for one address opened the inside host to another: %q", got)
	}
	live, _ = fw.List()
	if !containsGrant(live, all) || !containsGrant(live, dnatAll) {
		t.Errorf("List: want the forward-all grants, got %v", live)
	}
	if err := fw.Revoke([]firewall.Grant{all, dnatAll}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4b, in4, expectClosed); got != "" {
		t.Errorf("revoked forward-all still open: %q", got)
	}
}

var echoPort = port.Spec{Proto: port.TCP, Num: 7}

func countForwarded(gs []firewall.Grant, from, to netip.Addr) int {
	n := 0
	for _, g := range gs {
		if g.Addr == from && g.To == to {
			n++
		}
	}
	return n
}

func containsGrant(gs []firewall.Grant, want firewall.Grant) bool {
	for _, g := range gs {
		g.Timeout, g.Name = 0, ""
		w := want
		w.Timeout, w.Name = 0, ""
		if g == w {
			return true
		}
	}
	return false
}

func TestNFTablesDockerPublishedPort(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "nft", "iptables")
	g := netnstest.NewGateway(t)
	_, dockerRules := g.DockerPublish(t)
	published := netip.AddrPortFrom(g.Server4, 8080)
	if got := whoami(g, g.Client4, published, expectOpen); got != g.Client4.String() {
		t.Fatalf("the published port does not work before postern: %q", got)
	}
	before := dockerRules()
	fw := firewall.NewKeeper(nftIn(t, g.Server), nil)
	defer fw.Close()
	web := port.Spec{Proto: port.TCP, Num: 8080}
	if err := fw.Setup(firewall.Rules{Protected: []port.Spec{web}, Published: true}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4, published, expectClosed); got != "" {
		t.Fatalf("published port open without a grant: %q", got)
	}
	if err := fw.Grant([]firewall.Grant{{Addr: g.Client4, Port: web, Timeout: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4, published, expectOpen); got != g.Client4.String() {
		t.Errorf("granted: the container saw %q", got)
	}
	if got := whoami(g, g.Client4b, published, expectClosed); got != "" {
		t.Errorf("another address reached the container: %q", got)
	}
	if after := dockerRules(); after != before {
		t.Errorf("Docker's rules changed:\n%s\nwas\n%s", after, before)
	}
	// Without Published the same rules leave the container alone (Docker
	// hosts opt in).
	if err := fw.Setup(firewall.Rules{Protected: []port.Spec{web}}); err != nil {
		t.Fatal(err)
	}
	if got := whoami(g, g.Client4b, published, expectOpen); got != g.Client4b.String() {
		t.Errorf("Published off: the container saw %q", got)
	}
}

func TestIPTablesGateway(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables", "ip6tables", "ipset", "nft")
	g := netnstest.NewGateway(t)
	b := firewall.NewIPTables(func(name string, args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", g.Server.Name, name}, args...)...)
	})
	fw := firewall.NewKeeper(b, nil)
	defer fw.Close()
	testGateway(t, g, fw, false)
	if err := fw.Setup(firewall.Rules{Protected: []port.Spec{ssh}}); err != nil {
		t.Fatal(err)
	}
	if out := g.Server.Exec(t, "iptables-save") + g.Server.Exec(t, "ipset", "list", "-n"); strings.Contains(out, "POSTERN_") ||
		strings.Contains(out, "postern-fwd") || !strings.Contains(out, "-A INPUT -j POSTERN") {
		t.Errorf("after the gateway was dropped:\n%s", out)
	}
	if d, err := fw.Check(); err != nil || !d.Intact() {
		t.Errorf("audit without a gateway: %+v %v", d, err)
	}
	if err := fw.Cleanup(); err != nil {
		t.Fatal(err)
	}
	left := g.Server.Exec(t, "iptables-save") + g.Server.Exec(t, "ip6tables-save") + g.Server.Exec(t, "ipset", "list", "-n")
	if strings.Contains(strings.ToLower(left), "postern") {
		t.Errorf("cleanup left:\n%s", left)
	}
}
