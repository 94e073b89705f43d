//go:build linux

// Package netnstest puts tests inside fresh network namespaces that the test
// itself creates and removes: a "server" and a "client" joined by a veth
// pair, with test addresses from the benchmarking range 198.18.0.0/15 and
// the documentation prefix 2001:db8::/32, so traffic never leaves them.
//
// Tests that need root or a tool call Require. Outside CI a missing
// prerequisite skips the test with a message naming it; with CI=true it fails
// the test, so CI can never pass by skipping.
package netnstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// TB is the part of TB this package uses, so that the demo program
// can build the same namespaces as the tests.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Skip(args ...any)
	Cleanup(func())
}

// Require checks that the test runs as root and that every named program is
// installed.
func Require(t TB, programs ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range append([]string{"ip"}, programs...) {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: a missing prerequisite is a failure)", msg)
	}
	t.Skip(msg)
}

// NS is a network namespace made for one test.
type NS struct {
	Name string
}

// New creates a namespace with loopback up and removes it when the test ends.
func New(t TB, role string) *NS {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	ns := &NS{Name: "pst-" + role + "-" + hex.EncodeToString(b)}
	run(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.Name).Run() })
	ns.IP(t, "link", "set", "lo", "up")
	return ns
}

// Run runs a command in the test's own namespace, failing the test if it
// fails, and returns its combined output.
func Run(t TB, name string, args ...string) string {
	t.Helper()
	return run(t, name, args...)
}

func run(t TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// IP runs `ip ARGS` inside the namespace.
func (ns *NS) IP(t TB, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"-n", ns.Name}, args...)...)
}

// Exec runs a command inside the namespace and returns its combined output.
func (ns *NS) Exec(t TB, name string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// ExecInput runs a command inside the namespace with stdin as its input.
func (ns *NS) ExecInput(t TB, stdin, name string, args ...string) string {
	t.Helper()
	cmd := ns.Command(context.Background(), name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Command prepares a command that runs inside the namespace.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Path is the namespace's bind mount, for setns(2) and netlink options.
func (ns *NS) Path() string { return "/run/netns/" + ns.Name }

// Do runs fn on an OS thread that has entered the namespace. Sockets created
// by fn belong to the namespace for their whole life, wherever they are used
// afterwards.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never returned to the scheduler's pool: it is
		// left locked so Go discards it when this goroutine exits, and no
		// other goroutine ever runs in the wrong namespace.
		runtime.LockOSThread()
		f, err := os.Open(ns.Path())
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Dial connects from inside the namespace, from local if it is valid.
func (ns *NS) Dial(network string, local netip.Addr, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if local.IsValid() {
			if network == "udp" {
				d.LocalAddr = &net.UDPAddr{IP: local.AsSlice()}
			} else {
				d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
			}
		}
		var err error
		c, err = d.Dial(network, to.String())
		return err
	})
	return c, err
}

// Listen opens a TCP listener inside the namespace.
func (ns *NS) Listen(t TB, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Echo runs a TCP echo service on addr inside the namespace until the test
// ends: the stand-in for the service postern protects.
func (ns *NS) Echo(t TB, addr string) {
	t.Helper()
	ns.serve(t, addr, func(c net.Conn) { io.Copy(c, c) })
}

// serve runs a TCP service on addr inside the namespace until the test
// ends, one goroutine per connection, which it closes after handle.
func (ns *NS) serve(t TB, addr string, handle func(net.Conn)) {
	t.Helper()
	l := ns.Listen(t, addr)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
}

// Pair is a server and a client namespace joined by a veth pair named veth0
// on both sides.
type Pair struct {
	Server, Client *NS
	// Addresses. The client has a second address of each family, for
	// checking that a grant opens a port for one address only.
	Server4, Client4, Client4b netip.Addr
	Server6, Client6, Client6b netip.Addr
}

// Interface is the name of the veth end in each namespace.
const Interface = "veth0"

// NewPair builds the two namespaces and their link.
func NewPair(t TB) *Pair {
	t.Helper()
	p := &Pair{
		Server: New(t, "srv"), Client: New(t, "cli"),
		Server4: netip.MustParseAddr("198.18.0.1"), Client4: netip.MustParseAddr("198.18.0.2"),
		Client4b: netip.MustParseAddr("198.18.0.3"),
		Server6:  netip.MustParseAddr("2001:db8::1"), Client6: netip.MustParseAddr("2001:db8::2"),
		Client6b: netip.MustParseAddr("2001:db8::3"),
	}
	p.Link(t)
	return p
}

// Link (re)creates the veth pair between the namespaces with the pair's
// addresses; after DelLink it stands for an interface re-created with the
// same name and a new index.
func (p *Pair) Link(t TB) {
	t.Helper()
	run(t, "ip", "link", "add", Interface, "netns", p.Server.Name, "type", "veth", "peer", "name", Interface, "netns", p.Client.Name)
	p.Server.IP(t, "addr", "add", p.Server4.String()+"/24", "dev", Interface)
	p.Server.IP(t, "addr", "add", p.Server6.String()+"/64", "dev", Interface, "nodad")
	for _, a := range []netip.Addr{p.Client4, p.Client4b} {
		p.Client.IP(t, "addr", "add", a.String()+"/24", "dev", Interface)
	}
	p.Client.IP(t, "addr", "add", p.Client6.String()+"/64", "dev", Interface, "nodad")
	// Deprecated, so that like the IPv4 secondary it is used only when asked for.
	p.Client.IP(t, "addr", "add", p.Client6b.String()+"/64", "dev", Interface, "nodad", "preferred_lft", "0")
	p.Server.IP(t, "link", "set", Interface, "up")
	p.Client.IP(t, "link", "set", Interface, "up")
}

// DelLink deletes the veth pair (both ends go).
func (p *Pair) DelLink(t TB) {
	t.Helper()
	p.Server.IP(t, "link", "del", Interface)
}

// Output collects a process's output safely while it runs.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// NewOutput returns an empty Output.
func NewOutput() *Output { return &Output{} }

func (o *Output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(b)
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// Mark returns a position in the output, for WaitAfter.
func (o *Output) Mark() int { return len(o.String()) }

// WaitFor polls until the output contains a line with every one of subs, or
// fails the test after timeout.
func (o *Output) WaitFor(t TB, timeout time.Duration, subs ...string) string {
	t.Helper()
	return o.WaitAfter(t, 0, timeout, subs...)
}

// WaitAfter is WaitFor for output written after mark.
func (o *Output) WaitAfter(t TB, mark int, timeout time.Duration, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := o.String()[mark:]
		if lineWithAll(s, subs) != "" {
			return lineWithAll(s, subs)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no output line with %q within %v; output:\n%s", subs, timeout, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lineWithAll returns the first line containing every one of subs.
func lineWithAll(s string, subs []string) string {
	for _, line := range strings.Split(s, "\n") {
		ok := true
		for _, sub := range subs {
			if !strings.Contains(line, sub) {
				ok = false
				break
			}
		}
		if ok && line != "" {
			return line
		}
	}
	return ""
}

// Whoami runs a TCP service on addr inside the namespace that writes the
// address each connection comes from, then closes it: what a host behind a
// gateway sees of a translated client.
func (ns *NS) Whoami(t TB, addr string) {
	t.Helper()
	ns.serve(t, addr, func(c net.Conn) {
		fmt.Fprintln(c, netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap())
	})
}

// Gateway is a client, a gateway and an inside host: the client reaches the
// inside host only through the gateway (the Pair's server end), which
// forwards between its two links. Both outer hosts route through it.
type Gateway struct {
	*Pair
	Inside *NS
	// The gateway's inner addresses and the inside host's, on veth1.
	Gateway4, Inside4 netip.Addr
	Gateway6, Inside6 netip.Addr
}

// InsideInterface is the gateway's link to the inside host; the inside
// host's end is called Interface, so a daemon can run there as in a Pair.
const InsideInterface = "veth1"

// NewGateway builds the three namespaces, their links and routes, and turns
// forwarding on in the gateway.
func NewGateway(t TB) *Gateway {
	t.Helper()
	g := &Gateway{Pair: NewPair(t), Inside: New(t, "in"),
		Gateway4: netip.MustParseAddr("10.77.1.1"), Inside4: netip.MustParseAddr("10.77.1.2"),
		Gateway6: netip.MustParseAddr("fd77::1"), Inside6: netip.MustParseAddr("fd77::2")}
	gw := g.Server
	run(t, "ip", "link", "add", InsideInterface, "netns", gw.Name, "type", "veth", "peer", "name", Interface, "netns", g.Inside.Name)
	gw.IP(t, "addr", "add", g.Gateway4.String()+"/24", "dev", InsideInterface)
	gw.IP(t, "addr", "add", g.Gateway6.String()+"/64", "dev", InsideInterface, "nodad")
	g.Inside.IP(t, "addr", "add", g.Inside4.String()+"/24", "dev", Interface)
	g.Inside.IP(t, "addr", "add", g.Inside6.String()+"/64", "dev", Interface, "nodad")
	gw.IP(t, "link", "set", InsideInterface, "up")
	g.Inside.IP(t, "link", "set", Interface, "up")
	g.Inside.IP(t, "route", "add", "default", "via", g.Gateway4.String())
	g.Inside.IP(t, "-6", "route", "add", "default", "via", g.Gateway6.String())
	g.Client.IP(t, "route", "add", "default", "via", g.Server4.String())
	g.Client.IP(t, "-6", "route", "add", "default", "via", g.Server6.String())
	gw.Exec(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return g
}

// DockerPublish makes the gateway namespace a stand-in for a Docker host: a
// bridge docker0 with one container behind it and the rules Docker writes
// for `docker run -p 8080:80` with iptables-nft (DNAT in its nat chain
// DOCKER, FORWARD policy drop, its filter chain DOCKER accepting the
// container's port). It returns iptables-save's view of Docker's rules.
// The container answers on port 80 with the address it sees (Whoami).
func (g *Gateway) DockerPublish(t TB) (container *NS, rules func() string) {
	t.Helper()
	gw := g.Server
	container = New(t, "ctr")
	gw.IP(t, "link", "add", "docker0", "type", "bridge")
	gw.IP(t, "addr", "add", "172.17.0.1/16", "dev", "docker0")
	gw.IP(t, "link", "set", "docker0", "up")
	run(t, "ip", "link", "add", "vethctr", "netns", gw.Name, "type", "veth", "peer", "name", "eth0", "netns", container.Name)
	gw.IP(t, "link", "set", "vethctr", "master", "docker0", "up")
	container.IP(t, "addr", "add", "172.17.0.2/16", "dev", "eth0")
	container.IP(t, "link", "set", "eth0", "up")
	container.IP(t, "route", "add", "default", "via", "172.17.0.1")
	for _, args := range [][]string{
		{"-t", "nat", "-N", "DOCKER"},
		{"-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"},
		{"-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"},
		{"-t", "nat", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN"},
		{"-t", "nat", "-A", "DOCKER", "!", "-i", "docker0", "-p", "tcp", "-m", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "172.17.0.2:80"},
		{"-N", "DOCKER"},
		{"-P", "FORWARD", "DROP"},
		{"-A", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		{"-A", "FORWARD", "-o", "docker0", "-j", "DOCKER"},
		{"-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"},
		{"-A", "DOCKER", "-d", "172.17.0.2/32", "!", "-i", "docker0", "-o", "docker0", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "ACCEPT"},
	} {
		gw.Exec(t, "iptables", args...)
	}
	container.Whoami(t, ":80")
	return container, func() string {
		var keep []string
		for _, l := range strings.Split(gw.Exec(t, "iptables-save"), "\n") {
			if !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, ":") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
}

// Masquerade makes the gateway a NAT router: what the client sends to the
// inside host leaves with the gateway's inner address, as behind a home
// router (the client is "inside" the NAT, the far host outside).
func (g *Gateway) Masquerade(t TB) {
	t.Helper()
	g.Server.ExecInput(t, "table inet natlab {\n chain post {\n  type nat hook postrouting priority srcnat;\n  oifname \""+
		InsideInterface+"\" masquerade\n }\n}\n", "nft", "-f", "-")
}

// Behind returns the Pair a daemon on the inside host and a client behind
// the gateway see: the inside host is the server.
func (g *Gateway) Behind() *Pair {
	return &Pair{Server: g.Inside, Client: g.Client,
		Server4: g.Inside4, Client4: g.Client4, Client4b: g.Client4b,
		Server6: g.Inside6, Client6: g.Client6, Client6b: g.Client6b}
}
