package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/postern/postern/port"
)

// timestampSysctl makes conntrack record when each connection began; the
// sweep needs it to cut only what began while the rules were gone.
const timestampSysctl = "/proc/sys/net/netfilter/nf_conntrack_timestamp"

// EnableConntrackTimestamps turns on conntrack's start timestamps in this
// network namespace if they are off. Connections tracked before have no
// timestamp and are never cut: only those that began after can have
// slipped in. It fails where /proc/sys is read-only (systemd's
// ProtectKernelTunables; postern setup, run before, sets it).
func EnableConntrackTimestamps() error {
	b, err := os.ReadFile(timestampSysctl)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	return os.WriteFile(timestampSysctl, []byte("1\n"), 0o644)
}

// SweepConntrack is a Sweeper over the kernel's connection tracking: it
// deletes the tracked connections to a protected port of this host that
// began at or after since and that no live grant covers (source address,
// protocol, port). A connection without a start timestamp (tracked before
// timestamps were on) is left alone: it did not slip in.
func SweepConntrack(protected []port.Spec, live []Grant, since time.Time) (int, error) {
	return sweepConntrack(nil, localAddrs, protected, live, since)
}

// ConntrackSweeperIn is SweepConntrack for the network namespace open as
// netnsFD, whose addresses local returns (tests; the daemon sweeps its own).
func ConntrackSweeperIn(netnsFD int, local func() []netip.Addr) Sweeper {
	return func(protected []port.Spec, live []Grant, since time.Time) (int, error) {
		return sweepConntrack(&netlink.Config{NetNS: netnsFD}, local, protected, live, since)
	}
}

// localAddrs returns this host's addresses.
func localAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

func sweepConntrack(nc *netlink.Config, localOf func() []netip.Addr, protected []port.Spec, live []Grant, since time.Time) (int, error) {
	if len(protected) == 0 {
		return 0, nil
	}
	c, err := conntrack.Dial(nc)
	if err != nil {
		return 0, fmt.Errorf("conntrack: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("conntrack: %w", err)
	}
	// Only connections to this host: a router's forwarded flows to the
	// same port numbers are not postern's.
	local := map[netip.Addr]bool{}
	for _, a := range localOf() {
		local[a] = true
	}
	closed := make(map[port.Spec]bool, len(protected))
	for _, p := range protected {
		closed[p] = true
	}
	type key struct {
		addr netip.Addr
		p    port.Spec
	}
	covered := make(map[key]bool, len(live))
	for _, g := range live {
		if !g.Forwarded() && !g.Local {
			covered[key{g.Addr.Unmap(), g.Port}] = true
		}
	}
	cut := 0
	var errs []error
	for _, f := range flows {
		p := port.Spec{Proto: port.Protocol(f.TupleOrig.Proto.Protocol), Num: f.TupleOrig.Proto.DestinationPort}
		start := f.Timestamp.Start
		if !closed[p] || !local[f.TupleOrig.IP.DestinationAddress.Unmap()] || start.IsZero() || start.Before(since) ||
			covered[key{f.TupleOrig.IP.SourceAddress.Unmap(), p}] {
			continue
		}
		if err := c.Delete(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		cut++
	}
	return cut, errors.Join(errs...)
}

// ConntrackUsed counts the connections conntrack holds that g let in
// since it was made: a counted grant's connections used before a flush
// are not given back by the restore. Errors count none (the restore then
// errs on the side of the owner).
func ConntrackUsed(g Grant, since time.Time) int { return conntrackUsed(nil, g, since) }

// ConntrackUsedIn is ConntrackUsed for the network namespace open as
// netnsFD (tests).
func ConntrackUsedIn(netnsFD int) func(Grant, time.Time) int {
	return func(g Grant, since time.Time) int { return conntrackUsed(&netlink.Config{NetNS: netnsFD}, g, since) }
}

func conntrackUsed(nc *netlink.Config, g Grant, since time.Time) int {
	c, err := conntrack.Dial(nc)
	if err != nil {
		return 0
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return 0
	}
	n := 0
	for _, f := range flows {
		t := f.TupleOrig
		if t.IP.SourceAddress.Unmap() == g.Addr.Unmap() && port.Protocol(t.Proto.Protocol) == g.Port.Proto &&
			t.Proto.DestinationPort == g.Port.Num && !f.Timestamp.Start.Before(since.Add(-time.Second)) {
			n++
		}
	}
	return n
}
