// Package firewall applies grants: it closes the protected and knock ports
// and opens a protected port for one address, for a limited time. Expiry is
// the kernel's job wherever the backend allows it, so a crashed daemon never
// leaves a door open. Backends touch only what postern owns; they never
// decide who may open what (that is package policy).
package firewall

import (
	"fmt"
	"net/netip"
	"time"

	"postern/port"
)

// Grant opens Port for Addr. In Backend.Grant, Timeout is how long; in
// Backend.List, how long is left.
type Grant struct {
	Addr    netip.Addr
	Port    port.Spec
	Timeout time.Duration
}

func (g Grant) String() string { return fmt.Sprintf("%v %v for %v", g.Addr, g.Port, g.Timeout) }

// Rules are what the firewall closes.
type Rules struct {
	// Protected ports are closed to everyone except live grants.
	Protected []port.Spec
	// Knock ports are always closed: knocks are captured before the
	// firewall, so the host never answers one. Empty when the knock
	// arrives on an ordinary socket.
	Knock []port.Spec
	// KnockRanges are closed like Knock: the port ranges rotating knock
	// sequences are drawn from.
	KnockRanges []PortRange
}

// PortRange is the ports Lo..Hi of one protocol.
type PortRange struct {
	Proto  port.Protocol
	Lo, Hi uint16
}

// Backend is a firewall implementation. Implementations are safe for
// concurrent use.
type Backend interface {
	// Setup installs or updates postern's rules atomically and
	// idempotently, keeping live grants.
	Setup(Rules) error
	// Grant opens ports. A grant that is already live is extended to the
	// later of its current and its new expiry, never shortened.
	Grant([]Grant) error
	// Revoke closes granted ports now; revoking what is not granted is
	// not an error.
	Revoke([]Grant) error
	// List returns the live grants with their remaining time.
	List() ([]Grant, error)
	// Cleanup removes everything postern installed.
	Cleanup() error
	Close() error
}

// expiries remembers when grants made by this process end, so that a
// re-grant can extend but never shorten one. Kernels (nftables, ipset)
// replace a timeout rather than keep the later one.
type expiries map[Grant]time.Time

func grantKey(g Grant) Grant { return Grant{Addr: g.Addr.Unmap(), Port: g.Port} }

// extends reports whether g, granted at now, ends later than what this
// process granted before, and returns its end.
func (e expiries) extends(g Grant, now time.Time) (time.Time, bool) {
	until := now.Add(g.Timeout)
	prev, ok := e[grantKey(g)]
	return until, !ok || !prev.After(until)
}

// forgetExpired drops grants that ended before now.
func (e expiries) forgetExpired(now time.Time) {
	for k, t := range e {
		if now.After(t) {
			delete(e, k)
		}
	}
}
