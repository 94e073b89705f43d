package client

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// sendSYN sends a TCP SYN to a:port: a connect given up almost at once
// (Windows has no non-blocking connect in the standard library), so that
// the closed port's silence costs nothing and no retransmission follows.
func sendSYN(a netip.Addr, p uint16) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", netip.AddrPortFrom(a, p).String())
	if err == nil {
		c.Close()
	}
	return nil // a refused or silent port is the expected answer
}
