package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// DialPatiently connects to addr, trying again until patience runs out.
// The first SYN may reach the server before its grant does and be
// dropped: try again soon. Each attempt waits twice as long as the one
// before, so a path whose round trip is longer than the first wait (a
// satellite link, a VPN across the world) still connects.
func DialPatiently(ctx context.Context, addr string, patience time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(patience)
	wait := 300 * time.Millisecond
	for {
		var d net.Dialer
		attempt, cancel := context.WithTimeout(ctx, min(wait, time.Until(deadline)))
		c, err := d.DialContext(attempt, "tcp", addr)
		timedOut := attempt.Err() != nil
		cancel()
		if err == nil {
			return c, nil
		}
		// Refused: the SYN got through the firewall (a dropped one times
		// out), so waiting longer changes nothing.
		if !time.Now().Before(deadline) || ctx.Err() != nil || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connecting to %s: %w", addr, err)
		}
		if !timedOut {
			// Failed at once (refused, unreachable): do not spin.
			select {
			case <-time.After(min(wait, time.Until(deadline))):
			case <-ctx.Done():
			}
		}
		wait *= 2
	}
}

// Relay copies stdin to conn and conn to stdout until conn ends, then
// closes it: the ssh ProxyCommand's session.
func Relay(conn net.Conn, stdin io.Reader, stdout io.Writer) error {
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
