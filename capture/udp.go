package capture

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv6"
)

// UDP receives knocks on an ordinary UDP socket, for hosts and containers
// where raw capture is not wanted. The knock port must then reach the socket
// (the firewall cannot drop it), but the server still never answers: nothing
// is ever written to the socket.
type UDP struct {
	conn *net.UDPConn
	pc   *ipv6.PacketConn
}

// ListenUDP listens on port on every address, IPv4 and IPv6.
func ListenUDP(port uint16) (*UDP, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	pc := ipv6.NewPacketConn(c)
	// The destination address is needed to check a knock's destination
	// binding; Linux reports it, IPv4-mapped, for IPv4 packets too.
	if err := pc.SetControlMessage(ipv6.FlagDst, true); err != nil {
		c.Close()
		return nil, fmt.Errorf("capture: %w", err)
	}
	return &UDP{conn: c, pc: pc}, nil
}

// LocalPort returns the port the socket is bound to.
func (u *UDP) LocalPort() uint16 { return uint16(u.conn.LocalAddr().(*net.UDPAddr).Port) }

// Run reads datagrams until ctx ends.
func (u *UDP) Run(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { u.conn.Close() })
	defer stop()
	buf := make([]byte, snapLen)
	var f Frame
	local := uint16(u.conn.LocalAddr().(*net.UDPAddr).Port)
	for {
		n, cm, src, err := u.pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("capture: %w", err)
		}
		ua, _ := src.(*net.UDPAddr)
		f = Frame{Time: time.Now(), Proto: ProtoUDP, DstPort: local, Payload: buf[:n]}
		if ua != nil {
			ap := ua.AddrPort()
			f.Src, f.SrcPort = ap.Addr().Unmap(), ap.Port()
		}
		if cm != nil {
			if d, ok := netip.AddrFromSlice(cm.Dst); ok {
				f.Dst = d.Unmap()
			}
		}
		h(&f, nil)
	}
}

// Close closes the socket.
func (u *UDP) Close() error { return u.conn.Close() }
