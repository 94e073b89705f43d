//go:build linux

package netnstest

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/postern/postern/covert"
)

// Delay makes the gateway a slow router: instead of the kernel, a relay
// reading both of its links forwards every IPv4 packet between the client
// and the inside host after delay, so a round trip through it takes at
// least twice that. It stands in for tc netem, which this kernel lacks.
func (g *Gateway) Delay(t TB, delay time.Duration) {
	t.Helper()
	gw := g.Server
	gw.Exec(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
	mac := func(ns *NS, name string) (hw net.HardwareAddr) {
		if err := ns.Do(func() error {
			ifi, err := net.InterfaceByName(name)
			if err == nil {
				hw = ifi.HardwareAddr
			}
			return err
		}); err != nil {
			t.Fatalf("%v", err)
		}
		return hw
	}
	open := func(name string) (*packet.Conn, net.HardwareAddr) {
		var c *packet.Conn
		var hw net.HardwareAddr
		if err := gw.Do(func() error {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			hw = ifi.HardwareAddr
			c, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_IP, nil)
			return err
		}); err != nil {
			t.Fatalf("%v", err)
		}
		return c, hw
	}
	outer, outerMAC := open(Interface)
	inner, innerMAC := open(InsideInterface)
	clientMAC, insideMAC := mac(g.Client, Interface), mac(g.Inside, Interface)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); outer.Close(); inner.Close() })
	own := map[netip.Addr]bool{g.Server4: true, g.Gateway4: true}
	relay := func(from, to *packet.Conn, fromMAC, toMAC, nextMAC net.HardwareAddr) {
		buf := make([]byte, 2048)
		for {
			n, _, err := from.ReadFrom(buf)
			if err != nil {
				return
			}
			frame := buf[:n]
			if n < 34 || !bytes.Equal(frame[0:6], fromMAC) {
				continue // not addressed to the gateway (or its own output)
			}
			if dst := netip.AddrFrom4([4]byte(frame[30:34])); own[dst] {
				continue // for the gateway itself: the kernel's
			}
			out := append([]byte(nil), frame...)
			copy(out[0:6], nextMAC)
			copy(out[6:12], toMAC)
			// veth leaves TCP and UDP checksums to "hardware" that a
			// packet socket never sees: fill them in, as a NIC would.
			fixTransportSum(out[14:])
			time.AfterFunc(delay, func() {
				if ctx.Err() == nil {
					to.WriteTo(out, &packet.Addr{HardwareAddr: nextMAC})
				}
			})
		}
	}
	go relay(outer, inner, outerMAC, innerMAC, insideMAC)
	go relay(inner, outer, innerMAC, outerMAC, clientMAC)
}

// fixTransportSum computes the TCP or UDP checksum of an IPv4 packet.
func fixTransportSum(ip []byte) {
	if len(ip) < 20 {
		return
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(ip[2])<<8 | int(ip[3])
	if ihl < 20 || total > len(ip) || total < ihl || ip[6]&0x3f != 0 || ip[7] != 0 {
		return
	}
	l4 := ip[ihl:total]
	at := map[byte]int{6: 16, 17: 6}[ip[9]]
	if at == 0 || len(l4) < at+2 {
		return
	}
	l4[at], l4[at+1] = 0, 0
	pseudo := append(append([]byte{}, ip[12:20]...), 0, ip[9], byte(len(l4)>>8), byte(len(l4)))
	c := ^covert.Checksum(uint32(covert.Checksum(0, pseudo)), l4)
	if c == 0 && ip[9] == 17 {
		c = 0xffff
	}
	l4[at], l4[at+1] = byte(c>>8), byte(c)
}
