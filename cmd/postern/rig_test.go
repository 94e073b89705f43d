package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// The end-to-end tests run the real postern posternBin in fresh network
// namespaces against real nftables and AF_PACKET.

var posternBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postern-e2e")
	if err != nil {
		panic(err)
	}
	posternBin = filepath.Join(dir, "postern")
	build := exec.Command("go", "build", "-o", posternBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building postern: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const knockPort = 62201

var sshPort = port.Spec{Proto: port.TCP, Num: 22}

// rig is one server namespace running the daemon, one client namespace, keys
// and a configuration.
type rig struct {
	t        testing.TB
	p        *netnstest.Pair
	g        *netnstest.Gateway // with rigOptions.gateway
	dir      string
	cfgPath  string
	server   spa.ServerPrivateKey
	alice    string // key files
	stranger string
	daemon   *exec.Cmd
	env      []string // added to the daemon's environment
	groups   []uint32 // supplementary groups for the daemon
	out      *netnstest.Output
	exited   chan error
}

type rigOptions struct {
	capture string        // "" = afpacket
	extra   string        // appended to the configuration
	noSPA   bool          // doors only: no [[client]], no server key
	pq      bool          // a post-quantum (suite 2) server key
	gateway bool          // the server is a gateway to an inside host (r.g)
	nat     bool          // the server is the inside host, the client behind r.g, a NAT router
	mtu1280 bool          // the server is the inside host behind r.g, a router whose link to it has MTU 1280
	delay   time.Duration // the server is the inside host behind r.g, a router that holds each packet this long
	spa     string        // more [spa] keys
}

func newRig(t testing.TB, o rigOptions) *rig {
	t.Helper()
	netnstest.Require(t, "nft")
	r := &rig{t: t, dir: t.TempDir()}
	switch {
	case o.gateway:
		r.g = netnstest.NewGateway(t)
		r.p = r.g.Pair
	case o.nat:
		r.g = netnstest.NewGateway(t)
		r.g.Masquerade(t)
		r.p = r.g.Behind()
	case o.delay > 0:
		r.g = netnstest.NewGateway(t)
		r.g.Delay(t, o.delay)
		r.p = r.g.Behind()
	case o.mtu1280:
		r.g = netnstest.NewGateway(t)
		r.g.Server.IP(t, "link", "set", netnstest.InsideInterface, "mtu", "1280")
		r.g.Inside.IP(t, "link", "set", netnstest.Interface, "mtu", "1280")
		r.p = r.g.Behind()
	default:
		r.p = netnstest.NewPair(t)
	}
	var err error
	gen := spa.GenerateServerKey
	if o.pq {
		gen = spa.GenerateXWingServerKey
	}
	if r.server, err = gen(); err != nil {
		t.Fatal(err)
	}
	alice, _ := spa.GenerateClientKey()
	stranger, _ := spa.GenerateClientKey()
	r.alice = r.writeKey("alice.key", alice.Encode())
	r.stranger = r.writeKey("stranger.key", stranger.Encode())
	serverKey := r.writeKey("server.key", r.server.Encode())
	capture := o.capture
	if capture == "" {
		capture = "afpacket"
	}
	cfg := fmt.Sprintf(`interface = %q
capture = %q
private_key_file = %q
state_dir = %q
metrics_listen = "127.0.0.1:9101"

[spa]
port = %d
max_skew = "30s"
%s

[[client]]
name = "alice"
public_key = %q
allow = ["tcp/22"]
max_duration = "60s"
default_duration = "3s"
allow_source = false
%s`, netnstest.Interface, capture, serverKey, filepath.Join(r.dir, "state"), knockPort, o.spa, alice.Public(), o.extra)
	if o.noSPA {
		cfg = fmt.Sprintf("interface = %q\nstate_dir = %q\nmetrics_listen = \"127.0.0.1:9101\"\n%s",
			netnstest.Interface, filepath.Join(r.dir, "state"), o.extra)
	}
	r.cfgPath = filepath.Join(r.dir, "postern.toml")
	if err := os.WriteFile(r.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r.p.Server.Echo(t, "[::]:22")
	t.Cleanup(r.stop)
	return r
}

func (r *rig) writeKey(name, text string) string {
	path := filepath.Join(r.dir, name)
	if err := os.WriteFile(path, []byte(text+"\n"), 0o600); err != nil {
		r.t.Fatal(err)
	}
	return path
}

// start runs the daemon and waits until it reports ready.
func (r *rig) start() {
	r.t.Helper()
	r.startNotReady()
	r.out.WaitFor(r.t, 10*time.Second, "msg=ready")
}

// startNotReady runs the daemon without waiting for it to be ready.
func (r *rig) startNotReady() {
	r.t.Helper()
	r.out = netnstest.NewOutput()
	r.daemon = r.p.Server.Command(context.Background(), posternBin, "server", "-c", r.cfgPath)
	r.daemon.Stdout, r.daemon.Stderr = r.out, r.out
	r.daemon.Env = append(os.Environ(), r.env...)
	if r.groups != nil {
		r.daemon.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Groups: r.groups}}
	}
	if err := r.daemon.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.exited = make(chan error, 1)
	go func() { r.exited <- r.daemon.Wait() }()
}

// signal stops the daemon with sig and waits for it to exit.
func (r *rig) signal(sig syscall.Signal) {
	r.t.Helper()
	if r.daemon == nil {
		return
	}
	// `ip netns exec` execs the daemon, so the PID is the daemon's.
	r.daemon.Process.Signal(sig)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		r.t.Fatalf("daemon did not exit on %v", sig)
	}
	r.daemon = nil
}

func (r *rig) stop() {
	r.signal(syscall.SIGKILL)
	if r.t.Failed() && r.out != nil {
		r.t.Logf("daemon output:\n%s", r.out)
	}
}

// alive fails the test if the daemon has exited.
func (r *rig) alive() {
	r.t.Helper()
	select {
	case err := <-r.exited:
		r.t.Fatalf("daemon exited: %v\n%s", err, r.out)
	default:
	}
}

// postern runs the posternBin in the client namespace.
func (r *rig) postern(args ...string) (string, error) {
	cmd := r.p.Client.Command(context.Background(), posternBin, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// knock sends a knock as alice to host, with extra flags.
func (r *rig) knock(host netip.Addr, extra ...string) {
	r.t.Helper()
	r.knockWith(r.alice, r.server.Public().String(), host, extra...)
}

// knockOpen knocks as alice for dur and waits until her port is open.
func (r *rig) knockOpen(dur string) {
	r.t.Helper()
	r.knock(r.p.Server4, "--for", dur)
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after the knock").Close()
}

func (r *rig) knockWith(keyFile, serverPub string, host netip.Addr, extra ...string) {
	r.t.Helper()
	args := append([]string{"knock", "--key", keyFile, "--server-key", serverPub, "--open", "tcp/22"}, extra...)
	if out, err := r.postern(append(args, host.String())...); err != nil {
		r.t.Fatalf("postern knock: %v\n%s", err, out)
	}
}

// Reachability. A closed port drops SYNs: "closed" means the connection
// attempt timed out, not that it was refused.
const probeTimeout = 300 * time.Millisecond

func (r *rig) connect(from, to netip.Addr) (net.Conn, error) {
	return r.p.Client.Dial("tcp", from, netip.AddrPortFrom(to, 22), probeTimeout)
}

func (r *rig) requireClosed(from, to netip.Addr, what string) {
	r.t.Helper()
	c, err := r.connect(from, to)
	if err == nil {
		c.Close()
		r.t.Fatalf("%s: %v reached %v:22", what, from, to)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		r.t.Fatalf("%s: connect from %v failed with %v, want a timeout (dropped SYN)", what, from, err)
	}
}

// waitOpen polls until from can connect, failing after within.
func (r *rig) waitOpen(from, to netip.Addr, within time.Duration, what string) net.Conn {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := r.p.Client.Dial("tcp", from, netip.AddrPortFrom(to, 22), 50*time.Millisecond)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: %v could not connect to %v:22 within %v: %v", what, from, to, within, err)
		}
	}
}

// waitClosed polls until from can no longer connect.
func (r *rig) waitClosed(from, to netip.Addr, within time.Duration, what string) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := r.connect(from, to)
		if err != nil {
			r.requireClosed(from, to, what)
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: %v could still connect after %v", what, from, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func echoes(c net.Conn) error {
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("still here")); err != nil {
		return err
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "still here" {
		return fmt.Errorf("echo %q", buf)
	}
	return nil
}

// sniff captures the next knock packet arriving in the server namespace with
// a second AF_PACKET socket, as an attacker on the path would.
func (r *rig) sniff() <-chan []byte {
	r.t.Helper()
	var src *capture.AFPacket
	if err := r.p.Server.Do(func() (err error) {
		src, err = capture.OpenAFPacket(netnstest.Interface, []capture.Match{{Proto: port.UDP, Lo: knockPort, Hi: knockPort}})
		return
	}); err != nil {
		r.t.Fatal(err)
	}
	got := make(chan []byte, 1)
	ctx, cancel := context.WithCancel(context.Background())
	r.t.Cleanup(cancel)
	go src.Run(ctx, func(f *capture.Frame, err error) {
		if err == nil {
			select {
			case got <- append([]byte(nil), f.Payload...):
			default:
			}
		}
	})
	return got
}

// sendRaw sends payload to the knock port from the client namespace.
func (r *rig) sendRaw(from, to netip.Addr, payloads ...[]byte) {
	r.t.Helper()
	c, err := r.p.Client.Dial("udp", from, netip.AddrPortFrom(to, knockPort), time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	defer c.Close()
	for _, p := range payloads {
		c.Write(p) // ECONNREFUSED from an earlier datagram is not our concern
	}
}

// scrape reads the daemon's metrics endpoint.
func (r *rig) scrape() string {
	r.t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return r.p.Server.Dial("tcp", netip.Addr{}, netip.MustParseAddrPort(addr), time.Second)
		}}}
	resp, err := hc.Get("http://127.0.0.1:9101/metrics")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// metric scrapes one counter from the daemon's metrics endpoint.
func (r *rig) metric(language, outcome string) int {
	r.t.Helper()
	body := r.scrape()
	var n int
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, fmt.Sprintf("postern_knocks_total{language=%q,outcome=%q} ", language, outcome)) {
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%d", &n)
			return n
		}
	}
	r.t.Fatalf("no counter %q in:\n%s", outcome, body)
	return 0
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// reasonField is how the daemon's log writes a refusal reason (quoted only
// when it has a space).
func reasonField(reason string) string {
	if strings.ContainsAny(reason, " =\"") {
		return fmt.Sprintf("reason=%q", reason)
	}
	return "reason=" + reason
}
