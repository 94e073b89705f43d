package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// AFPacket captures knock traffic with AF_PACKET sockets, one per IP version,
// each with a BPF filter that passes only packets to the knock ports. It sees
// packets before netfilter, so the firewall can drop knocks (the host never
// answers one) and postern still reads them. Protocol-specific packet sockets
// receive incoming packets only, never the host's own outgoing ones.
type AFPacket struct {
	conns []*packet.Conn
}

// OpenAFPacket opens the sockets on interface ifname ("any" for all
// interfaces), passing only packets that fit matches. It needs CAP_NET_RAW,
// only here: the sockets stay usable after the capability is dropped.
func OpenAFPacket(ifname string, matches []Match) (*AFPacket, error) {
	if len(matches) == 0 {
		return nil, errors.New("capture: no knock ports to listen for")
	}
	ifi := &net.Interface{Index: 0, Name: "any"}
	if ifname != "any" {
		var err error
		if ifi, err = net.InterfaceByName(ifname); err != nil {
			return nil, fmt.Errorf("capture: interface %q: %w", ifname, err)
		}
	}
	a := &AFPacket{}
	for _, fam := range []struct {
		family    Family
		ethertype int
	}{{IPv4, unix.ETH_P_IP}, {IPv6, unix.ETH_P_IPV6}} {
		prog, err := Filter(fam.family, matches)
		if err != nil {
			a.Close()
			return nil, err
		}
		raw, err := bpf.Assemble(prog)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("capture: assembling filter: %w", err)
		}
		// The filter is attached before bind, so no unfiltered packet is
		// ever queued on the socket.
		c, err := packet.Listen(ifi, packet.Datagram, fam.ethertype, &packet.Config{Filter: raw})
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("capture: AF_PACKET on %s: %w", ifname, err)
		}
		if rc, err := c.SyscallConn(); err == nil {
			// A bigger queue rides out bursts; floods beyond it are
			// dropped by the kernel and counted in its socket stats.
			rc.Control(func(fd uintptr) {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			})
		}
		a.conns = append(a.conns, c)
	}
	return a, nil
}

// Run reads from every socket until ctx ends.
func (a *AFPacket) Run(ctx context.Context, h Handler) error {
	var mu sync.Mutex // Handlers are never called concurrently.
	errs := make(chan error, len(a.conns))
	for _, c := range a.conns {
		go func() {
			buf := make([]byte, snapLen)
			var f Frame
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				f.Time = time.Now()
				perr := Parse(buf[:n], &f)
				h(&f, perr)
				mu.Unlock()
			}
		}()
	}
	select {
	case <-ctx.Done():
		a.Close()
		return nil
	case err := <-errs:
		a.Close()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("capture: %w", err)
	}
}

// Close closes the sockets.
func (a *AFPacket) Close() error {
	for _, c := range a.conns {
		c.Close()
	}
	return nil
}
