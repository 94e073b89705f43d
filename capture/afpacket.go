//go:build linux

package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
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
//
// The sockets are bound to every interface and the filter picks the
// configured ones by index, so capture outlives the network: a link that
// goes down and up, an interface deleted and created again (a new index),
// or one that appears only after start-up never needs a new socket — which
// could not be had anyway once CAP_NET_RAW is dropped. Watch follows the
// interfaces' indexes and swaps the filter.
type AFPacket struct {
	conns   []*packet.Conn
	fams    []Family
	matches []Match
	names   []string // nil: every interface

	mu      sync.Mutex
	indexes []int // of names, as last seen
	closed  bool
}

// OpenAFPacket opens the sockets for the interface ifname: a name, several
// names separated by commas, or "any" for all interfaces. Interfaces that do
// not exist yet are waited for (see Watch). It needs CAP_NET_RAW, only here:
// the sockets stay usable after the capability is dropped.
func OpenAFPacket(ifname string, matches []Match) (*AFPacket, error) {
	if len(matches) == 0 {
		return nil, errors.New("capture: no knock ports to listen for")
	}
	a := &AFPacket{matches: matches}
	if ifname != "any" {
		a.names = strings.Split(ifname, ",")
	}
	a.indexes = a.lookup()
	all := &net.Interface{Index: 0, Name: "any"}
	for _, fam := range []struct {
		family    Family
		ethertype int
	}{{IPv4, unix.ETH_P_IP}, {IPv6, unix.ETH_P_IPV6}} {
		raw, err := a.filter(fam.family, a.indexes)
		if err != nil {
			a.Close()
			return nil, err
		}
		// The filter is attached before bind, so no unfiltered packet is
		// ever queued on the socket.
		c, err := packet.Listen(all, packet.Datagram, fam.ethertype, &packet.Config{Filter: raw})
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("capture: AF_PACKET on %s: %w", ifname, err)
		}
		if rc, err := c.SyscallConn(); err == nil {
			// A bigger queue rides out bursts; floods beyond it are
			// dropped by the kernel and counted in its socket stats.
			// SO_RCVBUF is capped by net.core.rmem_max (208 KiB by
			// default); with CAP_NET_ADMIN the daemon may go beyond.
			rc.Control(func(fd uintptr) {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) != nil {
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
				}
			})
		}
		a.conns = append(a.conns, c)
		a.fams = append(a.fams, fam.family)
	}
	return a, nil
}

// Missing returns the configured interfaces that do not exist now.
func (a *AFPacket) Missing() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for i, n := range a.names {
		if a.indexes[i] == 0 {
			out = append(out, n)
		}
	}
	return out
}

// lookup returns the index of each named interface, 0 for one that does
// not exist.
func (a *AFPacket) lookup() []int {
	out := make([]int, len(a.names))
	for i, n := range a.names {
		if ifi, err := net.InterfaceByName(n); err == nil {
			out[i] = ifi.Index
		}
	}
	return out
}

// filter is the knock filter behind a check of the receiving interface.
func (a *AFPacket) filter(fam Family, indexes []int) ([]bpf.RawInstruction, error) {
	prog, err := Filter(fam, a.matches)
	if err != nil {
		return nil, err
	}
	if a.names != nil {
		var live []int
		for _, ix := range indexes {
			if ix != 0 {
				live = append(live, ix)
			}
		}
		prog = append(InterfaceFilter(live), prog...)
	}
	prog = append(HostFilter(), prog...)
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("capture: assembling filter: %w", err)
	}
	return raw, nil
}

// HostFilter returns instructions that drop every frame the host itself
// would not take: addressed to another MAC (promiscuous mode, a bridge),
// sent out, or carrying a VLAN tag (a VLAN the host may not be on: the
// kernel hands tagged frames to packet sockets on the parent interface).
func HostFilter() []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_HOST, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadExtension{Num: bpf.ExtVLANTagPresent},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
	}
}

// InterfaceFilter returns instructions that drop every packet not received
// on one of the interfaces with these indexes (all packets, if none), and
// fall through to what follows otherwise.
func InterfaceFilter(indexes []int) []bpf.Instruction {
	prog := []bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtInterfaceIndex}}
	for i, ix := range indexes {
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(ix), SkipTrue: uint8(len(indexes) - i)})
	}
	return append(prog, bpf.RetConstant{Val: 0})
}

// SetMatches swaps the filter on every socket for one passing matches
// (a door's sequence changed).
func (a *AFPacket) SetMatches(matches []Match) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.matches = matches
	return a.swap(a.indexes)
}

// Reconfigure captures on other interfaces (as OpenAFPacket takes them)
// and for other matches, without a new socket (a reload, after CAP_NET_RAW
// is gone).
func (a *AFPacket) Reconfigure(ifname string, matches []Match) error {
	if len(matches) == 0 {
		return errors.New("capture: no knock ports to listen for")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.names
	a.names = nil
	if ifname != "any" {
		a.names = strings.Split(ifname, ",")
	}
	if (old == nil) != (a.names == nil) {
		// "any" has no interface filter: the program's shape changes, which
		// the swap handles, but the watcher was started for one or the other.
		a.names = old
		return errors.New("capture: switching between \"any\" and named interfaces needs a restart")
	}
	a.matches = matches
	a.indexes = a.lookup()
	return a.swap(a.indexes)
}

// swap installs the filter for indexes on every socket; a.mu is held.
func (a *AFPacket) swap(indexes []int) error {
	for i, c := range a.conns {
		raw, err := a.filter(a.fams[i], indexes)
		if err == nil {
			err = c.SetBPF(raw)
		}
		if err != nil {
			return fmt.Errorf("capture: swapping the filter: %w", err)
		}
	}
	return nil
}

// Watch follows the configured interfaces every interval until ctx ends:
// when one appears, disappears or comes back with a new index, the filter
// is swapped on every socket. changed is told each time (for the log).
func (a *AFPacket) Watch(ctx context.Context, every time.Duration, changed func(name string, index int)) error {
	if a.names == nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.mu.Lock()
		now := a.lookup()
		if slices.Equal(now, a.indexes) || a.closed {
			a.mu.Unlock()
			continue
		}
		if err := a.swap(now); err != nil {
			a.mu.Unlock()
			return err
		}
		before, names := a.indexes, a.names
		a.indexes = now
		a.mu.Unlock()
		for i, n := range names {
			if i >= len(before) || before[i] != now[i] {
				changed(n, now[i])
			}
		}
	}
}

// Run reads from every socket until ctx ends. A read error never ends it
// (an interface going away reports one): it is passed to transient, and
// reading goes on after a short pause.
func (a *AFPacket) Run(ctx context.Context, h Handler) error {
	return a.RunWithErrors(ctx, h, nil)
}

// RunWithErrors is Run, telling transient of read errors (nil: ignored).
func (a *AFPacket) RunWithErrors(ctx context.Context, h Handler, transient func(error)) error {
	var mu sync.Mutex // Handlers are never called concurrently.
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { a.Close() })
	defer stop()
	frags := NewReassembler()
	var failed Frame
	report := func(fs []Failure) {
		for _, fl := range fs {
			failed = Frame{Src: fl.Src, Dst: fl.Dst, Proto: ProtoUDP, Time: time.Now()}
			h(&failed, fl.Err)
		}
	}
	// Datagrams whose last fragments never come are reported even when
	// no other packet arrives.
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(fragmentTimeout / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			mu.Lock()
			if frags.Pending() > 0 {
				report(frags.Expire(time.Now()))
			}
			mu.Unlock()
		}
	}()
	for _, c := range a.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, snapLen)
			var f Frame
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
						return
					}
					if transient != nil {
						transient(err)
					}
					select {
					case <-ctx.Done():
						return
					case <-time.After(50 * time.Millisecond):
					}
					continue
				}
				mu.Lock()
				f.Time = time.Now()
				perr := Parse(buf[:n], &f)
				if errors.Is(perr, ErrFragment) {
					whole := frags.Add(buf[:n], f.Time)
					report(frags.Failures())
					if whole == nil {
						mu.Unlock()
						continue
					}
					if perr = Parse(whole, &f); perr == nil && !a.wants(&f) {
						mu.Unlock()
						continue // another port's datagram: not ours
					}
				}
				h(&f, perr)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return nil
}

// wants reports whether a rebuilt datagram is for a knock port: the kernel
// filter passes every UDP fragment after the first, whatever its port.
func (a *AFPacket) wants(f *Frame) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.matches {
		if m.Proto == ProtoUDP && f.Proto == ProtoUDP && m.Lo <= f.DstPort && f.DstPort <= m.Hi {
			return true
		}
	}
	return false
}

// Close closes the sockets.
func (a *AFPacket) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	for _, c := range a.conns {
		c.Close()
	}
	return nil
}
