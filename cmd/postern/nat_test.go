package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/netnstest"
)

// startSTUN runs coturn as a STUN-only server on addr:3478 in ns until the
// test ends, and waits until it answers.
func startSTUN(t *testing.T, ns *netnstest.NS, addr netip.Addr) string {
	t.Helper()
	netnstest.Require(t, "turnserver")
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	cmd := ns.Command(ctx, "turnserver", "-n", "--stun-only", "--listening-ip", addr.String(), "--listening-port", "3478",
		"--no-cli", "--no-tls", "--no-dtls", "--log-file", filepath.Join(dir, "turn.log"), "--simple-log",
		"--pidfile", filepath.Join(dir, "turn.pid"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	server := netip.AddrPortFrom(addr, 3478).String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ns.Do(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err := client.DiscoverAddress(ctx, "udp4", []string{server})
			return err
		})
		if err == nil {
			return server
		}
		if time.Now().After(deadline) {
			t.Fatalf("coturn does not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // refused until it listens
	}
}

// A client behind a NAT router: its own address is private, the server
// sees the router's. --allow auto asks a STUN server (the real coturn, on
// the server's host) and the door opens for the router's public address;
// a plain knock grants the private address, and the server's log line says
// the address differs from the packet's source.
func TestKnockBehindNAT(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{nat: true})
	stun := startSTUN(t, r.p.Server, r.p.Server4)
	r.start()
	srv, public := r.p.Server4, r.g.Gateway4

	mark := r.out.Mark()
	r.knock(srv)
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=spa", "src="+public.String(),
		"allow="+r.p.Client4.String(), "nat=true")
	r.requireClosed(r.p.Client4, srv, "a grant for the private address")

	mark = r.out.Mark()
	r.knock(srv, "--allow", "auto", "--stun", stun)
	line := r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=spa", "src="+public.String(), "allow="+public.String())
	if strings.Contains(line, "nat=true") {
		t.Errorf("the STUN-discovered address is the source, yet: %s", line)
	}
	r.waitOpen(r.p.Client4, srv, time.Second, "after --allow auto").Close()

	// The same from a profile: allow = "auto" and client.toml's stun_servers.
	r.waitClosed(r.p.Client4, srv, 5*time.Second, "after the grant expired")
	cfg := filepath.Join(r.dir, "client.toml")
	os.WriteFile(cfg, []byte(`stun_servers = ["`+stun+`"]
[[spa]]
name = "home"
host = "`+srv.String()+`"
key_file = "`+r.alice+`"
server_key = "`+r.server.Public().String()+`"
allow = "auto"
`), 0o600)
	if out, err := r.postern("knock", "--config", cfg, "--profile", "home"); err != nil {
		t.Fatalf("knock --profile: %v\n%s", err, out)
	}
	r.waitOpen(r.p.Client4, srv, time.Second, "profile with allow = auto").Close()

	// No STUN server: a clear error, nothing sent.
	os.WriteFile(cfg, []byte("[[spa]]\nname = \"home\"\nhost = \""+srv.String()+"\"\nkey_file = \""+r.alice+
		"\"\nserver_key = \""+r.server.Public().String()+"\"\nallow = \"auto\"\n"), 0o600)
	if out, err := r.postern("knock", "--config", cfg, "--profile", "home"); err == nil || !strings.Contains(out, "needs a STUN server") {
		t.Fatalf("without a STUN server: %v\n%s", err, out)
	}
}

// postern fwknop -R --resolve-url behind the same NAT: the page (served on
// the server's host) says which address it sees, and fwknop's knock asks
// for that one.
func TestFwknopResolveBehindNAT(t *testing.T) {
	t.Parallel()
	r := fwknopRigWith(t, rigOptions{nat: true, noSPA: true}, "SOURCE ANY\nKEY_BASE64 "+fwKey+"\nHMAC_KEY_BASE64 "+fwHMAC+
		"\nOPEN_PORTS tcp/22\nFW_ACCESS_TIMEOUT 3\n", "")
	l := r.p.Server.Listen(t, r.p.Server4.String()+":8080")
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		host, _, _ := net.SplitHostPort(req.RemoteAddr)
		fmt.Fprintf(w, "<p>%s</p>\n", host)
	}))
	r.start()
	srv, public := r.p.Server4, r.g.Gateway4
	mark := r.out.Mark()
	if out, err := r.postern("fwknop", "--no-rc-file", "-A", "tcp/22", "-R", "--resolve-url", "http://"+srv.String()+":8080/ip",
		"-D", srv.String(), "--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac"); err != nil {
		t.Fatalf("postern fwknop -R: %v\n%s", err, out)
	}
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=fwknop", "allow="+public.String())
	r.waitOpen(r.p.Client4, srv, time.Second, "after fwknop -R").Close()
}

// A suite-2 knock (1412 bytes) over a path whose MTU is 1280: over IPv4 the
// router fragments it, over IPv6 the client does; the server rebuilds the
// datagram from the fragments its capture sees, and the first knock opens
// the door over both families.
func TestPostQuantumKnockOverSmallMTU(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{mtu1280: true, pq: true})
	r.start()
	for _, fam := range []struct{ srv, cli, other netip.Addr }{
		{r.p.Server4, r.p.Client4, r.p.Client4b}, {r.p.Server6, r.p.Client6, r.p.Client6b},
	} {
		r.requireClosed(fam.cli, fam.srv, "before the knock")
		mark := r.out.Mark()
		r.knock(fam.srv)
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=spa", "allow="+fam.cli.String())
		r.waitOpen(fam.cli, fam.srv, time.Second, "after a fragmented suite-2 knock").Close()
		r.requireClosed(fam.other, fam.srv, "another address")
	}
}

// Fragments that never complete are counted and logged, not lost in
// silence: the first fragment of a knock whose rest never comes.
func TestLostFragmentIsReported(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	conn, srvMAC, cliMAC := rawLink(t, r.p)
	mark := r.out.Mark()
	if _, err := conn.WriteTo(firstFragment4(srvMAC, cliMAC, r.p.Client4, r.p.Server4, knockPort), &packet.Addr{HardwareAddr: srvMAC}); err != nil {
		t.Fatal(err)
	}
	r.out.WaitAfter(t, mark, 5*time.Second, "msg=refused language=capture", "src="+r.p.Client4.String(),
		`detail="IP fragments not completed in time"`)
}

// firstFragment4 is an Ethernet frame with the first fragment (more to
// come) of a large UDP datagram to port.
func firstFragment4(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, port uint16) []byte {
	f := append(append(append([]byte{}, dstMAC...), srcMAC...), 0x08, 0x00)
	ip := make([]byte, 20+1000)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], 0x4242)
	binary.BigEndian.PutUint16(ip[6:], 0x2000) // more fragments, offset 0
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(0, ip[:20]))
	binary.BigEndian.PutUint16(ip[20:], 40001)
	binary.BigEndian.PutUint16(ip[22:], port)
	binary.BigEndian.PutUint16(ip[24:], 1420) // the whole datagram's length
	return append(f, ip...)
}
