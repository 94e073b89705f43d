package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/postern/postern/knock"
	"github.com/postern/postern/port"
)

// SequenceOptions describe one port-knock sequence.
type SequenceOptions struct {
	Host    string
	Network string // "ip" (default), "ip4" or "ip6"
	Hits    []knock.Hit
	Delay   time.Duration // between hits (knock -d)
	Verbose io.Writer     // nil: quiet
}

// Sequence sends each hit to the host, as knock(1) does: a TCP hit is one
// SYN (a non-blocking connect, closed at once), a UDP hit one 1-byte
// datagram; an ICMP hit is one echo request with the hit's payload length.
func Sequence(ctx context.Context, o SequenceOptions) error {
	network := o.Network
	if network == "" {
		network = "ip"
	}
	addr, err := resolveIP(ctx, network, o.Host)
	if err != nil {
		return err
	}
	for i, h := range o.Hits {
		if i > 0 && o.Delay > 0 {
			select {
			case <-time.After(o.Delay):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if o.Verbose != nil {
			fmt.Fprintf(o.Verbose, "hitting %s %s\n", h.Proto, hitTarget(addr, h))
		}
		if err := sendHit(addr, h); err != nil {
			return fmt.Errorf("knock: %s to %v: %w", h, addr, err)
		}
	}
	return nil
}

func hitTarget(a netip.Addr, h knock.Hit) string {
	if h.Proto == knock.ICMP {
		return fmt.Sprintf("%v (%d bytes)", a, h.Num)
	}
	return netip.AddrPortFrom(a, h.Num).String()
}

// ResolveHost resolves host for network "ip", "ip4" or "ip6".
func ResolveHost(network, host string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return resolveIP(ctx, network, host)
}

func resolveIP(ctx context.Context, network, host string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		if (network == "ip4" && !a.Is4()) || (network == "ip6" && a.Is4()) {
			return netip.Addr{}, fmt.Errorf("knock: %s is not an %s address", host, network)
		}
		return a, nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("knock: resolving %s: %w", host, err)
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("knock: %s has no address", host)
	}
	return addrs[0].Unmap(), nil
}

func sendHit(a netip.Addr, h knock.Hit) error {
	switch h.Proto {
	case port.TCP:
		return sendSYN(a, h.Num)
	case port.UDP:
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, h.Num)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte{0})
		return err
	case knock.ICMP:
		return sendEcho(a, int(h.Num))
	}
	return fmt.Errorf("cannot send a %v hit", h.Proto)
}

// sendEcho sends one echo request with a payload of n bytes, through an
// unprivileged ping socket where the system allows one, else a raw socket.
func sendEcho(a netip.Addr, n int) error {
	network, raw, typ := "udp4", "ip4:icmp", icmp.Type(ipv4.ICMPTypeEcho)
	if a.Is6() {
		network, raw, typ = "udp6", "ip6:ipv6-icmp", ipv6.ICMPTypeEchoRequest
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: 1, Data: make([]byte, n)}}
	b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
	if err != nil {
		return err
	}
	var dst net.Addr = &net.UDPAddr{IP: a.AsSlice()}
	c, err := icmp.ListenPacket(network, "")
	if err != nil {
		if c, err = icmp.ListenPacket(raw, ""); err != nil {
			return fmt.Errorf("no ping socket and no raw socket (needs CAP_NET_RAW or net.ipv4.ping_group_range): %w", err)
		}
		dst = &net.IPAddr{IP: a.AsSlice()}
	}
	defer c.Close()
	_, err = c.WriteTo(b, dst)
	return err
}

// ParseKnockArgs reads knock(1)'s port arguments: "7000", "8000:udp",
// "9000:tcp"; udp makes every hit without a suffix UDP (knock -u). As an
// extension, "64:icmp" is an echo request with a 64-byte payload.
func ParseKnockArgs(args []string, udp bool) ([]knock.Hit, error) {
	var hits []knock.Hit
	for _, a := range args {
		num, proto, hasProto := a, "", false
		if i := strings.LastIndexByte(a, ':'); i >= 0 {
			num, proto, hasProto = a[:i], a[i+1:], true
		}
		if hasProto && proto == "icmp" {
			h, err := knock.ParseHit("icmp/" + num)
			if err != nil {
				return nil, err
			}
			hits = append(hits, h)
			continue
		}
		spec := num
		if !hasProto && udp {
			spec += ":udp"
		} else if hasProto {
			// knock(1): any suffix other than udp counts as tcp.
			if proto == "udp" {
				spec += ":udp"
			}
		}
		seq, err := knock.ParseKnockdSequence(spec)
		if err != nil {
			return nil, err
		}
		hits = append(hits, seq...)
	}
	if len(hits) == 0 {
		return nil, errors.New("no ports to knock")
	}
	return hits, nil
}
