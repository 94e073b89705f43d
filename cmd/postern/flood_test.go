package main

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/postern/postern/internal/netnstest"
)

// synFrom builds an IPv6 TCP SYN from src to dst:dport with a correct
// checksum: what a spoofing flooder puts on the wire.
func synFrom(buf []byte, src, dst netip.Addr, dport uint16) []byte {
	b := buf[:60]
	clear(b)
	binary.BigEndian.PutUint32(b[0:], 6<<28)
	binary.BigEndian.PutUint16(b[4:], 20)
	b[6], b[7] = unix.IPPROTO_TCP, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	t := b[40:]
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], 1)
	t[12], t[13] = 5<<4, 0x02
	binary.BigEndian.PutUint16(t[14:], 64240)
	var sum uint32
	for i := 8; i < 40; i += 2 { // pseudo-header addresses
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	sum += 20 + unix.IPPROTO_TCP
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(t[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(t[16:], ^uint16(sum))
	return b
}

// spoofer returns a function that sends raw IPv6 packets from the client
// namespace to the server's interface, whatever their source address.
func (r *rig) spoofer() func(pkt []byte) {
	r.t.Helper()
	var mac net.HardwareAddr
	if err := r.p.Server.Do(func() error {
		ifi, err := net.InterfaceByName(netnstest.Interface)
		if err == nil {
			mac = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
	var conn *packet.Conn
	if err := r.p.Client.Do(func() error {
		ifi, err := net.InterfaceByName(netnstest.Interface)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_IPV6, nil)
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	to := &packet.Addr{HardwareAddr: mac}
	return func(pkt []byte) {
		if _, err := conn.WriteTo(pkt, to); err != nil {
			r.t.Fatalf("sending a spoofed packet: %v", err)
		}
	}
}

func rssKiB(t *testing.T, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestFloodOfSpoofedSources: first-stage hits from 1 000 000 distinct spoofed
// IPv6 sources. The state table stays at max_tracked (the oldest attempts
// are evicted and counted), resident memory stays under the bound that
// max_tracked implies, and a legitimate knocker in the middle of the flood
// still gets in.
func TestFloodOfSpoofedSources(t *testing.T) {
	t.Parallel()
	const maxTracked = 100_000
	r := newRig(t, rigOptions{noSPA: true, extra: fmt.Sprintf(`
[knock]
max_tracked = %d

[[door]]
name = "ssh"
sequence = ["tcp/7000", "tcp/8000", "tcp/9000"]
seq_timeout = "5s"
open = ["tcp/22"]
`, maxTracked)})
	r.start()
	before := rssKiB(t, r.daemon.Process.Pid)

	spoof := r.spoofer()

	const sources = 1_000_000
	buf := make([]byte, 64)
	src := netip.MustParseAddr("2001:db8:ff::").As16()
	start := time.Now()
	legitDone := make(chan error, 1)
	for i := range sources {
		src[12], src[13], src[14], src[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		spoof(synFrom(buf, netip.AddrFrom16(src), r.p.Server6, 7000))
		if i%1000 == 999 {
			// Bounded: at most about 100 000 packets a second.
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * 10 * time.Microsecond)))
		}
		if i == sources/2 {
			go func() {
				out, err := r.postern("knock", r.p.Server4.String(), "7000", "8000", "9000")
				if err != nil {
					err = fmt.Errorf("%v: %s", err, out)
				}
				legitDone <- err
			}()
		}
	}
	if err := <-legitDone; err != nil {
		t.Fatal(err)
	}
	sent := time.Since(start)
	r.alive()
	r.waitOpen(r.p.Client4, r.p.Server4, 2*time.Second, "legitimate knocker during the flood").Close()
	time.Sleep(500 * time.Millisecond) // let the daemon drain its socket
	after := rssKiB(t, r.daemon.Process.Pid)
	evicted := r.metric("door", "knock evicted")
	t.Logf("%d spoofed sources in %v; evicted %d; daemon RSS %d KiB before, %d KiB after", sources, sent.Round(time.Millisecond), evicted, before, after)
	if evicted < sources/2 {
		t.Fatalf("only %d evictions from %d spoofed sources with max_tracked %d", evicted, sources, maxTracked)
	}
	// The table holds max_tracked attempts of ~150 bytes; everything else is
	// the daemon's fixed cost. Allow 48 MiB on top of the idle RSS.
	if limit := before + 48*1024; after > limit {
		t.Fatalf("RSS grew from %d KiB to %d KiB (limit %d KiB)", before, after, limit)
	}
	if n := strings.Count(r.out.String(), "\n"); n > 2000 {
		t.Fatalf("the flood produced %d log lines", n)
	}
}

// TestFwknopJunkFlood: an unpaced flood of base64 junk from one address
// against 100 stanzas (each packet would cost 100 HMACs, about 50 µs) while
// another address sends four valid fwknop knocks: each opens within 2 s,
// and the junk source got no more stanza trials than its rate limit
// allows (without the limit, every junk packet read is tried).
func TestFwknopJunkFlood(t *testing.T) {
	netnstest.Require(t, "fwknop", "iptables")
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	var access strings.Builder
	for i := range 99 {
		fmt.Fprintf(&access, "SOURCE ANY\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\nOPEN_PORTS tcp/%d\n\n",
			base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("junk-flood-key-%016d", i))),
			base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("junk-flood-hmac-key-%044d", i))), 1000+i)
	}
	fmt.Fprintf(&access, "SOURCE 198.18.0.3\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\nOPEN_PORTS tcp/22\n", keyA, hmacA)
	path := filepath.Join(dir, "access.conf")
	os.WriteFile(path, []byte(access.String()), 0o600)
	d := startPosternFwknop(t, path)
	defer d.stop()
	// Four knocks, each with a spare: a knock the kernel drops from a full
	// capture queue (the flood fills it when the machine is loaded) is sent
	// again as a fresh one after a second, as `postern knock --wait` does.
	var knocks [][]byte
	for range 8 {
		pkt, err := fwknopPacket(t, dir, []string{"--key-base64-rijndael", keyA, "--key-base64-hmac", hmacA, "-a", "198.18.0.3", "-A", "tcp/22"})
		if err != nil {
			t.Fatal(err)
		}
		knocks = append(knocks, pkt)
	}
	junk := []byte(strings.Repeat("abcdEFGH0123+/xy", 13)[:200])
	flood, err := d.pair.Client.Dial("udp", d.pair.Client4, netip.AddrPortFrom(d.pair.Server4, knockPort), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	stop := make(chan struct{})
	flooded := make(chan int)
	go func() {
		n := 0
		defer func() { flooded <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range 1000 {
				flood.Write(junk) // unpaced; a full socket buffer drops, as a NIC would
			}
			n += 1000
		}
	}()
	start := time.Now()
	time.Sleep(500 * time.Millisecond) // the flood is under way
	granted := func(mark int, within time.Duration) bool {
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if strings.Contains(d.out.String()[mark:], "msg=granted language=fwknop src=198.18.0.3") {
				return true
			}
		}
		return false
	}
	resent := 0
	for i := range 4 {
		mark := d.out.Mark()
		d.send("198.18.0.3", knocks[2*i])
		if !granted(mark, time.Second) {
			resent++
			d.send("198.18.0.3", knocks[2*i+1])
			if !granted(mark, time.Second) {
				t.Fatalf("knock %d did not open within 2 s (sent twice)", i+1)
			}
		}
		t.Logf("knock %d opened", i+1)
	}
	close(stop)
	n := <-flooded
	elapsed := time.Since(start)
	tried, limited := d.metric("fwknop", "no matching stanza"), d.metric("fwknop", "rate limited")
	t.Logf("%d junk packets sent in %v: %d tried against the stanzas, %d rate limited; %d knocks sent again", n, elapsed.Round(time.Millisecond), tried, limited, resent)
	if most := 20 + int(10*elapsed.Seconds()) + 10; tried > most || limited == 0 {
		t.Fatalf("junk from one source was tried %d times in %v (at most %d allowed), %d rate limited", tried, elapsed, most, limited)
	}
}
