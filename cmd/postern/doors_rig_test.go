package main

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/knock"
	"github.com/postern/postern/port"
)

// hit sends one knock hit from a chosen client address: a TCP SYN (a
// connect that is given up at once) or a 1-byte UDP datagram.
func (r *rig) hit(from netip.Addr, to netip.Addr, h knock.Hit) {
	r.t.Helper()
	switch h.Proto {
	case port.TCP:
		c, err := r.p.Client.Dial("tcp", from, netip.AddrPortFrom(to, h.Num), 5*time.Millisecond)
		if err == nil {
			c.Close()
		}
	case port.UDP:
		c, err := r.p.Client.Dial("udp", from, netip.AddrPortFrom(to, h.Num), time.Second)
		if err != nil {
			r.t.Fatal(err)
		}
		c.Write([]byte{0})
		c.Close()
	default:
		r.t.Fatalf("hit %v: not TCP or UDP", h)
	}
}

func (r *rig) hits(from, to netip.Addr, hs ...knock.Hit) {
	r.t.Helper()
	for _, h := range hs {
		r.hit(from, to, h)
	}
}

// run runs a program in the client namespace and returns its output.
func (r *rig) clientRun(name string, args ...string) string {
	r.t.Helper()
	out, err := r.p.Client.Command(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		r.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dropByDefault gives the server namespace the firewall knockd users run:
// iptables INPUT policy DROP, loopback and established traffic accepted.
// knockd.conf commands then open ports with iptables -A.
func (r *rig) dropByDefault() {
	r.t.Helper()
	for _, args := range [][]string{
		{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
		{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-P", "INPUT", "DROP"},
	} {
		r.p.Server.Exec(r.t, "iptables", args...)
	}
}

func (r *rig) writeFile(name, content string) string {
	r.t.Helper()
	path := filepath.Join(r.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		r.t.Fatal(err)
	}
	return path
}

// waitFile polls until the file at path contains want.
func waitFile(t testing.TB, path, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s lacks %q after %v; it holds:\n%s", path, want, within, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tcpHit(n uint16) knock.Hit { return knock.Hit{Proto: port.TCP, Num: n} }
func udpHit(n uint16) knock.Hit { return knock.Hit{Proto: port.UDP, Num: n} }
