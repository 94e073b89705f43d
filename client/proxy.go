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
	for {
		var d net.Dialer
		attempt, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		c, err := d.DialContext(attempt, "tcp", addr)
		cancel()
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("proxy: connecting to %s: %w", addr, err)
		}
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
