package main

import (
	"bufio"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/spa"
)

// The gateway tests: a client, a gateway running postern, and an inside
// host that the client reaches only through the gateway (issue #15).

// whoami connects from the client's address from to to and returns the
// source address the inside host saw, or "" if the connection failed.
func (r *rig) whoami(from netip.Addr, to netip.AddrPort, timeout time.Duration) string {
	c, err := r.p.Client.Dial("tcp", from, to, timeout)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

// waitWhoami polls until the inside host answers from as want.
func (r *rig) waitWhoami(from netip.Addr, to netip.AddrPort, want netip.Addr, what string) {
	r.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := r.whoami(from, to, 200*time.Millisecond)
		if got == want.String() {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: %v → %v: the inside host saw %q, want %v", what, from, to, got, want)
		}
	}
}

// requireNoWay fails if from reaches to at all.
func (r *rig) requireNoWay(from netip.Addr, to netip.AddrPort, what string) {
	r.t.Helper()
	if got := r.whoami(from, to, probeTimeout); got != "" {
		r.t.Fatalf("%s: %v reached %v (the inside host saw %q)", what, from, to, got)
	}
}

// waitNoWay polls until from no longer reaches to.
func (r *rig) waitNoWay(from netip.Addr, to netip.AddrPort, within time.Duration, what string) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for r.whoami(from, to, probeTimeout) != "" {
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: %v still reaches %v after %v", what, from, to, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestGatewaySPA(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{gateway: true, extra: `forward = ["10.77.1.2:tcp/22", "10.77.1.2:tcp/2200 via 2222 masquerade", "[fd77::2]:tcp/22"]
`})
	g := r.g
	g.Inside.Whoami(t, ":22")
	g.Inside.Whoami(t, ":2200")
	in4, in6 := netip.AddrPortFrom(g.Inside4, 22), netip.AddrPortFrom(g.Inside6, 22)
	check := r.p.Server.Exec(t, posternBin, "check-config", "-c", r.cfgPath)
	if !strings.Contains(check, "gateway: closed on the forward path: 10.77.1.2:tcp/22, 10.77.1.2:tcp/2200, [fd77::2]:tcp/22") {
		t.Errorf("check-config does not say what the forward path closes:\n%s", check)
	}
	r.start()
	r.requireNoWay(r.p.Client4, in4, "before any knock")
	r.requireNoWay(r.p.Client6, in6, "before any knock (IPv6)")

	mark := r.out.Mark()
	r.knockForward(r.p.Server4, "10.77.1.2:tcp/22")
	r.waitWhoami(r.p.Client4, in4, r.p.Client4, "after the knock")
	r.out.WaitAfter(t, mark, time.Second, "msg=granted language=spa", "client=alice", "allow="+r.p.Client4.String(),
		"to=10.77.1.2:tcp/22")
	r.requireNoWay(r.p.Client4b, in4, "another address")
	r.requireNoWay(r.p.Client6, in6, "the IPv6 destination, not asked for")

	r.knockForward(r.p.Server6, "[fd77::2]:tcp/22")
	r.waitWhoami(r.p.Client6, in6, r.p.Client6, "after the IPv6 knock")

	// DNAT from the gateway's port 2222, masqueraded: the inside host sees
	// the gateway.
	ext := netip.AddrPortFrom(r.p.Server4, 2222)
	r.requireNoWay(r.p.Client4, ext, "port 2222 before its knock")
	r.knockForward(r.p.Server4, "10.77.1.2:tcp/2200")
	r.waitWhoami(r.p.Client4, ext, g.Gateway4, "through DNAT and masquerade")
	r.requireNoWay(r.p.Client4b, ext, "port 2222 from another address")
	status := r.p.Server.Exec(t, posternBin, "status")
	if !strings.Contains(status, "10.77.1.2:tcp/2200 via 2222 masquerade") || !strings.Contains(status, "[fd77::2]:tcp/22") {
		t.Errorf("postern status does not show the gateway grants:\n%s", status)
	}

	// A close request removes the gateway grant at once.
	r.knockForward(r.p.Server4, "10.77.1.2:tcp/2200", "--for", "60s")
	r.waitWhoami(r.p.Client4, ext, g.Gateway4, "knocked for a minute")
	mark = r.out.Mark()
	if out, err := r.postern("knock", "--key", r.alice, "--server-key", r.server.Public().String(), "--close", "10.77.1.2:tcp/2200",
		r.p.Server4.String()); err != nil {
		t.Fatalf("knock --close: %v\n%s", err, out)
	}
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=closed language=spa", "client=alice")
	r.requireNoWay(r.p.Client4, ext, "after --close")

	// Destinations outside alice's forward list: refused with their own
	// reason, nothing opened.
	for _, to := range []string{"10.77.1.3:tcp/22", "10.77.1.2:tcp/23"} {
		mark := r.out.Mark()
		r.knockForward(r.p.Server4, to)
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused language=spa", `reason="destination not allowed"`, "client=alice")
	}
	if n := r.metric("spa", "destination not allowed"); n != 2 {
		t.Errorf("destination not allowed counted %d times, want 2", n)
	}

	// Expiry is the kernel's, also after SIGKILL.
	r.waitNoWay(r.p.Client4, in4, 5*time.Second, "after default_duration")
	r.knockForward(r.p.Server4, "10.77.1.2:tcp/22", "--for", "3s")
	r.waitWhoami(r.p.Client4, in4, r.p.Client4, "knocked again")
	r.signal(syscall.SIGKILL)
	r.waitWhoami(r.p.Client4, in4, r.p.Client4, "right after SIGKILL")
	r.waitNoWay(r.p.Client4, in4, 5*time.Second, "grant after SIGKILL")
}

// knockForward knocks as alice for a destination behind the gateway.
func (r *rig) knockForward(gateway netip.Addr, open string, extra ...string) {
	r.t.Helper()
	args := append([]string{"knock", "--key", r.alice, "--server-key", r.server.Public().String(), "--open", open}, extra...)
	if out, err := r.postern(append(args, gateway.String())...); err != nil {
		r.t.Fatalf("postern knock --open %s: %v\n%s", open, err, out)
	}
}

// fwknopGatewayRig is a gateway whose postern reads an access.conf with
// fwknopd's forwarding switched on.
func fwknopGatewayRig(t *testing.T, access, fwknop string, backend ...string) *rig {
	t.Helper()
	be := "nftables"
	if len(backend) > 0 {
		be = backend[0]
		netnstest.Require(t, "iptables", "ip6tables", "ipset")
	}
	return fwknopRigWith(t, rigOptions{noSPA: true, gateway: true}, access,
		fwknop+"\n[gateway]\nprotect = [\"10.77.1.2:tcp/22\"]\n[firewall]\nbackend = \""+be+"\"")
}

func TestGatewayRealFwknopNAT(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testGatewayRealFwknopNAT(t, backend)
		})
	}
}

func testGatewayRealFwknopNAT(t *testing.T, backend string) {
	r := fwknopGatewayRig(t, `SOURCE              ANY
KEY_BASE64          `+fwKey+`
HMAC_KEY_BASE64     `+fwHMAC+`
OPEN_PORTS          tcp/22
FW_ACCESS_TIMEOUT   3

SOURCE              ANY
KEY_BASE64          `+fwKey2+`
HMAC_KEY_BASE64     `+fwHMAC2+`
HMAC_DIGEST_TYPE    sha512
OPEN_PORTS          tcp/2222
FORCE_NAT           10.77.1.2 2200
FORCE_MASQUERADE    Y
FW_ACCESS_TIMEOUT   3

SOURCE              ANY
KEY                 fwknoptest
HMAC_KEY            hmactest
OPEN_PORTS          tcp/22
FORWARD_ALL         Y
FORCE_MASQUERADE    Y
FW_ACCESS_TIMEOUT   3
`, "forwarding = true", backend)
	g := r.g
	g.Inside.Whoami(t, ":22")
	g.Inside.Whoami(t, ":2200")
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	viaGateway := netip.AddrPortFrom(srv, 22)
	inside := netip.AddrPortFrom(g.Inside4, 22)
	r.requireNoWay(cli, inside, "before the knock")

	// fwknop -N: the gateway's port 22 leads to the inside host's 22 for
	// the client's address, which the inside host sees.
	mark := r.out.Mark()
	r.fwknop("-A", "tcp/22", "-N", "10.77.1.2:22", "-a", cli.String(), "-D", srv.String(),
		"--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac")
	r.waitWhoami(cli, viaGateway, cli, "after fwknop -N")
	r.out.WaitAfter(t, mark, time.Second, "msg=granted language=fwknop", "allow="+cli.String(), "to=\"10.77.1.2:tcp/22 via 22\"")
	// The grant leads through the gateway's port only: routed straight to
	// the inside host, the same client stays out (fwknopd's FORWARD rule
	// would let it in).
	r.requireNoWay(cli, inside, "routed to the inside host, not through the gateway's port")
	r.requireNoWay(r.p.Client4b, viaGateway, "another address through the gateway")
	r.requireNoWay(r.p.Client4b, inside, "another address to the inside host")
	r.waitNoWay(cli, viaGateway, 5*time.Second, "after FW_ACCESS_TIMEOUT")

	// FORCE_NAT without a NAT request: the stanza decides where -A tcp/2222
	// leads (masqueraded: the inside host sees the gateway).
	ext := netip.AddrPortFrom(srv, 2222)
	r.requireNoWay(cli, ext, "FORCE_NAT port before the knock")
	r.fwknop("-A", "tcp/2222", "-a", cli.String(), "-D", srv.String(),
		"--key-base64-rijndael", fwKey2, "--key-base64-hmac", fwHMAC2, "--use-hmac", "--hmac-digest-type", "sha512")
	r.waitWhoami(cli, ext, g.Gateway4, "after the FORCE_NAT knock")
	r.requireNoWay(r.p.Client4b, ext, "FORCE_NAT port from another address")

	// FORWARD_ALL with FORCE_MASQUERADE (no FORCE_NAT): everything behind
	// the gateway, for this address only, masqueraded.
	mark = r.out.Mark()
	r.fwknop("-A", "tcp/22", "-a", r.p.Client4b.String(), "-D", srv.String(),
		"--key-rijndael", "fwknoptest", "--key-hmac", "hmactest", "--use-hmac")
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=fwknop", "allow="+r.p.Client4b.String(), `to="everything masquerade"`)
	r.waitWhoami(r.p.Client4b, inside, g.Gateway4, "FORWARD_ALL")
	r.waitWhoami(r.p.Client4b, netip.AddrPortFrom(g.Inside4, 2200), g.Gateway4, "FORWARD_ALL, another port")
	status := r.p.Server.Exec(t, posternBin, "status")
	if !strings.Contains(status, "everything masquerade") {
		t.Errorf("postern status does not show the FORWARD_ALL grant:\n%s", status)
	}

	// SIGKILL leaves expiry to the kernel.
	r.signal(syscall.SIGKILL)
	r.waitWhoami(cli, ext, g.Gateway4, "right after SIGKILL")
	r.waitNoWay(cli, ext, 5*time.Second, "FORCE_NAT grant after SIGKILL")
	r.waitNoWay(r.p.Client4b, inside, 5*time.Second, "FORWARD_ALL grant after SIGKILL")
}

func TestGatewayFwknopNATNeedsForwarding(t *testing.T) {
	t.Parallel()
	r := fwknopGatewayRig(t, `SOURCE              ANY
KEY_BASE64          `+fwKey+`
HMAC_KEY_BASE64     `+fwHMAC+`
OPEN_PORTS          tcp/22
FW_ACCESS_TIMEOUT   3
`, "")
	r.g.Inside.Whoami(t, ":22")
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	mark := r.out.Mark()
	r.fwknop("-A", "tcp/22", "-N", "10.77.1.2:22", "-a", cli.String(), "-D", srv.String(),
		"--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac")
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused language=fwknop", `reason="NAT refused"`,
		`detail="forwarding is not enabled ([fwknop] forwarding)"`)
	r.requireNoWay(cli, netip.AddrPortFrom(srv, 22), "through the gateway")
	r.requireNoWay(cli, netip.AddrPortFrom(r.g.Inside4, 22), "to the inside host")
}

// A Docker host: the port a container publishes is closed until a knock,
// then open for the knocker only; Docker's rules stay as Docker wrote them.
func TestGatewayDockerPublishedPort(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "iptables")
	web, err := spa.GenerateClientKey()
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, rigOptions{gateway: true, extra: `
[[client]]
name = "web"
public_key = "` + web.Public().String() + `"
allow = ["tcp/8080"]
default_duration = "3s"

[gateway]
published = true
`})
	_, dockerRules := r.g.DockerPublish(t)
	published := netip.AddrPortFrom(r.p.Server4, 8080)
	r.waitWhoami(r.p.Client4, published, r.p.Client4, "before postern")
	before := dockerRules()
	r.start()
	r.requireNoWay(r.p.Client4, published, "published port before the knock")
	webKey := r.writeKey("web.key", web.Encode())
	if out, err := r.postern("knock", "--key", webKey, "--server-key", r.server.Public().String(), "--open", "tcp/8080",
		r.p.Server4.String()); err != nil {
		t.Fatalf("knock: %v\n%s", err, out)
	}
	r.waitWhoami(r.p.Client4, published, r.p.Client4, "after the knock")
	r.requireNoWay(r.p.Client4b, published, "another address")
	if after := dockerRules(); after != before {
		t.Errorf("Docker's rules changed:\n%s\nwas\n%s", after, before)
	}
	r.waitNoWay(r.p.Client4, published, 5*time.Second, "after the grant expired")
}

// postern fwknop's NAT requests (-N, --nat-local, --nat-port) are the
// messages the real fwknop client makes from the same arguments.
func TestPosternFwknopNATMessagesMatchFwknop(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "fwknop")
	keys := []string{"--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac", "-a", "10.9.9.2", "-D", "198.18.0.1"}
	fields := func(out string) string {
		var got []string
		for _, want := range []string{"Message Type:", "Message String:", "Nat Access:"} {
			for _, line := range strings.Split(out, "\n") {
				if _, v, ok := strings.Cut(line, want); ok {
					v, _, _ = strings.Cut(strings.TrimSpace(v), " ") // "5 (Local NAT access msg)" → "5"
					got = append(got, want+v)
					break
				}
			}
		}
		return strings.Join(got, " ")
	}
	for _, args := range []string{
		"-A tcp/22 -N 10.77.1.2:22",
		"-A tcp/2222 -N 10.77.1.2:22 -f 30",
		"-A tcp/22 --nat-local --nat-port 55000",
		"-A udp/53 --nat-local -f 10",
		"-A tcp/22 -N 10.77.1.2:2200 --nat-port 2222 --nat-local",
	} {
		a := append(strings.Fields(args), keys...)
		real, err := exec.Command("fwknop", append([]string{"-T", "-v", "--no-rc-file", "--no-save-args"}, a...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("fwknop %s: %v\n%s", args, err, real)
		}
		ours, err := exec.Command(posternBin, append([]string{"fwknop", "-T", "-v", "--no-rc-file"}, a...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("postern fwknop %s: %v\n%s", args, err, ours)
		}
		if w, g := fields(string(real)), fields(string(ours)); w != g || !strings.Contains(w, "Nat Access:") {
			t.Errorf("%s:\n fwknop  %s\n postern %s", args, w, g)
		}
	}
}

// fwknop's local NAT (fwknopd's ENABLE_IPT_LOCAL_NAT), asked for by
// postern's own fwknop client: the gateway's port 2222 leads to its own
// port 22, for the knocker only.
func TestGatewayFwknopLocalNAT(t *testing.T) {
	t.Parallel()
	r := fwknopGatewayRig(t, `SOURCE              ANY
KEY_BASE64          `+fwKey+`
HMAC_KEY_BASE64     `+fwHMAC+`
OPEN_PORTS          tcp/22, tcp/2222
FW_ACCESS_TIMEOUT   3
`, "local_nat = true")
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	ext := netip.AddrPortFrom(srv, 2222)
	mark := r.out.Mark()
	if out, err := r.postern("fwknop", "--no-rc-file", "-A", "tcp/22", "--nat-local", "--nat-port", "2222", "-a", cli.String(),
		"-D", srv.String(), "--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac"); err != nil {
		t.Fatalf("postern fwknop --nat-local: %v\n%s", err, out)
	}
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=fwknop", "allow="+cli.String(), `to="this host via 2222"`)
	c, err := r.p.Client.Dial("tcp", cli, ext, time.Second)
	if err != nil {
		t.Fatalf("port 2222 after the local NAT knock: %v", err)
	}
	if err := echoes(c); err != nil {
		t.Errorf("port 2222 does not lead to port 22: %v", err)
	}
	c.Close()
	if c, err := r.p.Client.Dial("tcp", r.p.Client4b, ext, probeTimeout); err == nil {
		c.Close()
		t.Error("another address reached port 22 through 2222")
	}
	r.requireClosed(r.p.Client4b, srv, "port 22 from another address")
}
