package server

import (
	"context"
	"os"
	"strconv"
	"time"
)

// watchdog pings systemd's watchdog (WatchdogSec=) at half its interval,
// but only while the expiry timer keeps getting the packet lock: a daemon
// wedged in a packet handler or a firewall call stops pinging and systemd
// restarts it. Without WATCHDOG_USEC it returns at once.
func (s *Server) watchdog(ctx context.Context) error {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return nil
	}
	interval := time.Duration(usec) * time.Microsecond
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	stale := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		last := time.Unix(0, s.alive.Load())
		if time.Since(last) < interval/2 {
			Notify("WATCHDOG=1")
			stale = false
		} else if !stale {
			s.log.Error("packet loop or expiry timer stuck; no watchdog ping", "since", time.Since(last).Round(time.Millisecond))
			stale = true
		}
	}
}
