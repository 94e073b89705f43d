// Package client builds and sends knocks. It never listens: a knock is one
// datagram out, and the server never answers.
package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"golang.org/x/crypto/ssh"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// Options describe one postern SPA knock.
type Options struct {
	Key spa.ClientPrivateKey
	// SSH, if set, signs the knock instead of Key: an OpenSSH key or a key
	// held by ssh-agent (see SSHSigner).
	SSH       ssh.Signer
	ServerKey spa.ServerPublicKey
	Host      string // name or address of the server
	Port      uint16 // the server's knock port
	Network   string // "udp" (default), "udp4" or "udp6"
	Open      []port.Spec
	Duration  time.Duration // 0: the server's default for this client
	// Allow is the address to grant: "" for this host's own address on
	// the route to the server, "auto" for the address STUN servers see
	// (this host's public address behind NAT), "source" for whatever
	// source address the server sees, or an explicit address.
	Allow string
	// BindDest binds the knock to the server address it is sent to, so it
	// cannot be replayed to another server that shares the key.
	BindDest bool
	// TimeOffset shifts the knock's timestamp (a client whose clock is
	// known to be off; also how tests make stale knocks).
	TimeOffset time.Duration
	Action     string
	// STUN lists the STUN servers (host:port) that --allow auto asks.
	STUN []string
	// TokenKey pre-authenticates the knock (postern token's output, decoded).
	TokenKey []byte
	// To, when valid, asks for Open on that host behind the server (a
	// gateway) instead of on the server. The knock then goes over To's
	// address family, so the address granted is of the same family.
	To netip.Addr
}

// Sent says what was sent where.
type Sent struct {
	To     netip.AddrPort
	Knock  spa.Knock
	Packet []byte
	// Fragmented: a router said the path is too small for the knock, so
	// it went in fragments, which servers before postern 0.3 drop.
	Fragmented bool
}

// KnockEach knocks every address family the server has: a name with an
// IPv4 and an IPv6 address gets one knock over each, each granting this
// host's own address of that family, so whichever family a later
// connection picks (ssh tries IPv6 first) finds the door open. With
// Network "udp4"/"udp6", an address, or any Allow (an address, or
// "source": such knocks share one replay lane on the server, where two
// arriving out of order would refuse each other) it knocks once.
// It succeeds when at least one knock was sent; failures of the others
// come back with the knocks that went.
func KnockEach(ctx context.Context, o Options) ([]Sent, error) {
	network := cmp.Or(o.Network, "udp")
	if network == "udp" && o.To.IsValid() {
		network = map[bool]string{true: "udp4", false: "udp6"}[o.To.Unmap().Is4()]
		o.Network = network
	}
	if _, err := netip.ParseAddr(o.Host); err == nil || network != "udp" || o.Allow != "" && o.Allow != "auto" {
		s, err := Knock(ctx, o)
		if err != nil {
			return nil, err
		}
		return []Sent{s}, nil
	}
	addrs, err := lookup(ctx, "ip", o.Host)
	if err != nil {
		return nil, err
	}
	var sent []Sent
	var errs []error
	for _, fam := range []struct {
		network string
		is      func(netip.Addr) bool
	}{{"udp6", netip.Addr.Is6}, {"udp4", netip.Addr.Is4}} {
		i := slices.IndexFunc(addrs, fam.is)
		if i < 0 {
			continue
		}
		one := o
		one.Host, one.Network = addrs[i].String(), fam.network
		s, err := Knock(ctx, one)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sent = append(sent, s)
	}
	if len(sent) == 0 {
		return nil, errors.Join(errs...)
	}
	return sent, errors.Join(errs...)
}

// Knock resolves the server, seals one knock and sends it.
//
// Long on purpose: one knock per address family, each built, sent and reported in order.
func Knock(ctx context.Context, o Options) (Sent, error) {
	network := o.Network
	if network == "" {
		network = "udp"
	}
	if o.Port == 0 {
		return Sent{}, errors.New("no knock port")
	}
	to, err := resolve(ctx, network, o.Host, o.Port)
	if err != nil {
		return Sent{}, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, to.String())
	if err != nil {
		return Sent{}, fmt.Errorf("knock: %w", err)
	}
	defer conn.Close()
	// The connected socket's local address is this host's own address
	// on the route to the server: what to grant by default.
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()

	k := spa.Knock{Time: time.Now().Add(o.TimeOffset), Ports: o.Open, Duration: o.Duration, Action: o.Action, To: o.To,
		TokenKey: o.TokenKey}
	switch o.Allow {
	case "":
		k.Allow = local
	case "source":
		k.UseSource = true
	case "auto":
		fam := map[bool]string{true: "udp4", false: "udp6"}[to.Addr().Is4()]
		if k.Allow, err = DiscoverAddress(ctx, fam, o.STUN); err != nil {
			return Sent{}, err
		}
	default:
		a, err := netip.ParseAddr(o.Allow)
		if err != nil {
			return Sent{}, fmt.Errorf("--allow %q: want an IP address, \"auto\" or \"source\"", o.Allow)
		}
		k.Allow = a.Unmap()
	}
	if o.BindDest {
		k.Dest = to.Addr()
	}
	seal := func() ([]byte, error) {
		if o.SSH != nil {
			return spa.SealSSH(o.SSH, o.ServerKey, k)
		}
		return spa.Seal(o.Key, o.ServerKey, k)
	}
	pkt, err := seal()
	if err != nil {
		return Sent{}, err
	}
	forSmallPaths(conn, len(pkt))
	if _, err := conn.Write(pkt); err != nil {
		return Sent{}, fmt.Errorf("knock: sending to %v: %w", to, err)
	}
	fragmented := lostToPathMTU(conn, len(pkt))
	if fragmented {
		// A router dropped it ("packet too big"); the kernel now
		// fragments for this path. A fresh knock, so that the server
		// takes it even if the first got through after all.
		k.Time = time.Now().Add(o.TimeOffset)
		if pkt, err = seal(); err != nil {
			return Sent{}, err
		}
		_, err := conn.Write(pkt)
		if errors.Is(err, syscall.EMSGSIZE) {
			// The router's answer, reported on the connected socket:
			// taken, the next send goes out in fragments.
			_, err = conn.Write(pkt)
		}
		if err != nil {
			return Sent{}, fmt.Errorf("knock: sending to %v: %w", to, err)
		}
	}
	if o.SSH == nil {
		k.Client = o.Key.Public()
	}
	return Sent{To: to, Knock: k, Packet: pkt, Fragmented: fragmented}, nil
}

func resolve(ctx context.Context, network, host string, p uint16) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), p), nil
	}
	addrs, err := lookup(ctx, map[string]string{"udp": "ip", "udp4": "ip4", "udp6": "ip6"}[network], host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(addrs[0], p), nil
}

// lookup resolves host to at least one address (unmapped).
func lookup(ctx context.Context, ipnet, host string) ([]netip.Addr, error) {
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, ipnet, host)
	if err != nil {
		return nil, fmt.Errorf("knock: resolving %s: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("knock: %s has no address", host)
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, nil
}
