package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// ErrNoSTUNServer is returned for --allow auto without a STUN server.
var ErrNoSTUNServer = errors.New("--allow auto needs a STUN server: set stun_servers in client.toml or use --stun HOST:PORT")

// DiscoverAddress asks STUN servers (RFC 8489 Binding requests) which
// address this host's packets arrive from beyond any NAT, over network
// ("udp4" or "udp6": the family of the knock). No single answer is
// trusted — the knock will be signed for that address, and one forged
// response would have it opened for someone else: two servers must agree
// (asked in order until two answer), or, where only one answers, a second
// transaction to it from another port must give the same address. Answers
// that differ are an error naming both.
func DiscoverAddress(ctx context.Context, network string, servers []string) (netip.Addr, error) {
	if len(servers) == 0 {
		return netip.Addr{}, ErrNoSTUNServer
	}
	type answer struct {
		server string
		addr   netip.Addr
	}
	var got []answer
	var errs []error
	for _, s := range servers {
		a, err := stunBinding(ctx, network, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("STUN server %s: %w", s, err))
			continue
		}
		if got = append(got, answer{s, a}); len(got) == 2 {
			break
		}
	}
	switch len(got) {
	case 0:
		return netip.Addr{}, errors.Join(errs...)
	case 1:
		// One server: confirm with a transaction of its own (a new socket,
		// so another port and transaction id).
		a, err := stunBinding(ctx, network, got[0].server)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("STUN server %s answered %v once, and not again to confirm it: %w",
				got[0].server, got[0].addr, err)
		}
		got = append(got, answer{got[0].server + " (again)", a})
	}
	if got[0].addr != got[1].addr {
		return netip.Addr{}, fmt.Errorf("STUN answers disagree: %s says %v, %s says %v (a forged response?); "+
			"give --allow ADDR", got[0].server, got[0].addr, got[1].server, got[1].addr)
	}
	return got[0].addr, nil
}

// stunBinding sends a Binding request, retransmitting as RFC 8489 §6.2.1
// says (500 ms, doubling; here at most four sends), and returns the
// mapped address of the first matching success response.
func stunBinding(ctx context.Context, network, server string) (netip.Addr, error) {
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, "3478") // the default STUN port
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, server)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.Addr{}, err
	}
	buf := make([]byte, 1500)
	rto := 500 * time.Millisecond
	for range 4 {
		if _, err := c.Write(req.Raw); err != nil {
			return netip.Addr{}, err
		}
		deadline := time.Now().Add(rto)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		c.SetReadDeadline(deadline)
		for {
			n, err := c.Read(buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			if err != nil {
				return netip.Addr{}, err
			}
			if a, ok, err := mappedAddress(buf[:n], req.TransactionID); ok || err != nil {
				return a, err
			}
		}
		if ctx.Err() != nil {
			return netip.Addr{}, ctx.Err()
		}
		rto *= 2
	}
	return netip.Addr{}, errors.New("no answer")
}

// mappedAddress reads a Binding response to the transaction id: ok is false
// for anything else (ignored, as stray datagrams are).
func mappedAddress(b []byte, id [stun.TransactionIDSize]byte) (netip.Addr, bool, error) {
	res := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := res.Decode(); err != nil || res.TransactionID != id {
		return netip.Addr{}, false, nil
	}
	if res.Type != stun.BindingSuccess {
		return netip.Addr{}, true, fmt.Errorf("answered %v", res.Type)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(res); err == nil {
		a, ok := netip.AddrFromSlice(xor.IP)
		return a.Unmap(), ok, nil
	}
	var plain stun.MappedAddress // RFC 3489 servers
	if err := plain.GetFrom(res); err == nil {
		a, ok := netip.AddrFromSlice(plain.IP)
		return a.Unmap(), ok, nil
	}
	return netip.Addr{}, true, errors.New("the response has no mapped address")
}
