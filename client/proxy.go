package client

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"
)

// Proxy connects to addr, retrying while the grant lands (a knock and the
// connection race each other), then copies stdin to the connection and the
// connection to stdout until either side closes: an ssh ProxyCommand.
func Proxy(ctx context.Context, addr string, stdin io.Reader, stdout io.Writer, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	var conn net.Conn
	// The first SYN may reach the server before its grant does and be
	// dropped: try again soon. Each attempt waits twice as long as the
	// one before, so a path whose round trip is longer than the first
	// wait (a satellite link, a VPN across the world) still connects.
	wait := 300 * time.Millisecond
	for {
		var d net.Dialer
		attempt, cancel := context.WithTimeout(ctx, min(wait, time.Until(deadline)))
		c, err := d.DialContext(attempt, "tcp", addr)
		cancel()
		if err == nil {
			conn = c
			break
		}
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			return fmt.Errorf("proxy: connecting to %s: %w", addr, err)
		}
		wait *= 2
	}
	defer conn.Close()
	go func() {
		io.Copy(conn, stdin)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite() // pass the end of input on, keep reading
		}
	}()
	// The connection's end is the session's end; ssh keeps our stdin open
	// until then, so the copy from it is not waited for.
	_, err := io.Copy(stdout, conn)
	return err
}
