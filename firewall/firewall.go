// Package firewall applies grants: it closes the protected and knock ports
// and opens a protected port for one address, for a limited time. Expiry is
// the kernel's job wherever the backend allows it, so a crashed daemon never
// leaves a door open. Backends touch only what postern owns; they never
// decide who may open what (that is package policy).
package firewall

import (
	"fmt"
	"time"

	"github.com/postern/postern/firewall/mode"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
)

// Grant opens Port for Addr (policy decides them; it is the same type).
// In Backend.Grant, Timeout is how long; in Backend.List, how long is
// left. Name says who asked; kernel backends keep it beside the element.
type Grant = policy.Grant

// keyOf is what identifies a grant in the kernel: everything but how long
// and who asked.
func keyOf(g Grant) Grant {
	g.Addr, g.To, g.SNAT = g.Addr.Unmap(), g.To.Unmap(), g.SNAT.Unmap()
	g.Timeout, g.Name = 0, ""
	if g.Connections > 1 {
		g.Connections = 1 // counted: how many are left is the kernel's, not the key's
	}
	return g
}

// Destination is a port of a host behind this one (gateway mode).
type Destination = policy.Destination

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
	// Forwarded destinations behind this host are closed on the forward
	// path except for live gateway grants.
	Forwarded []Destination
	// Published closes Protected ports on the forward path too, for
	// connections that were DNATed to another host by someone else's rule
	// (the ports Docker publishes), matched by their original destination
	// port; the host's own grants open them.
	Published bool
	// Gateway installs the forward path and its translations even with no
	// Forwarded destination (fwknop clients may name any host).
	Gateway bool
	// Connections and Idle install what grants with a lifetime need: a
	// set per connection a counted grant may let in (the most any grant
	// allows), and the sets of idle grants for each idle duration in use
	// (nftables only).
	Connections int
	Idle        []time.Duration
}

// UsesGateway reports whether the forward path and NAT are installed: a
// host that needs neither gets nothing its kernel might lack.
func (r Rules) UsesGateway() bool { return r.Gateway || r.Published || len(r.Forwarded) > 0 }

// PortRange is the ports Lo..Hi of one protocol.
type PortRange struct {
	Proto  port.Protocol
	Lo, Hi uint16
}

// Backend is a firewall implementation. Implementations are safe for
// concurrent use. They set what they are told; Keeper adds the rules that
// span calls (extend never shorten, restore after tampering).
type Backend interface {
	// Setup installs or updates postern's rules atomically and
	// idempotently, keeping live grants.
	Setup(Rules) error
	// Grant opens ports, each for its Timeout from now, replacing the
	// timeout of a grant that is already live.
	Grant([]Grant) error
	// Revoke closes granted ports now; revoking what is not granted is
	// not an error.
	Revoke([]Grant) error
	// List returns the live grants with their remaining time, as the
	// kernel holds them.
	List() ([]Grant, error)
	// Audit compares what is installed with r and says what is missing
	// or altered; a zero Damage means intact.
	Audit(r Rules) (Damage, error)
	// Installed returns the protected ports installed now (what Cleanup
	// would open to everyone); ok is false if nothing is installed.
	Installed() (protected []port.Spec, ok bool, err error)
	// Cleanup removes everything postern installed.
	Cleanup() error
	Close() error
}

// Damage is what an audit found missing or altered.
type Damage struct {
	// What names each missing or altered part, such as "table inet
	// postern" or "chain POSTERN rules".
	What []string
	// GrantsLost is set when the grant sets themselves are gone, so the
	// grants they held must be put back.
	GrantsLost bool
	// Cut is how many connections made while the rules were gone the
	// restore cut (Keeper with a Sweeper).
	Cut int
}

// Intact reports whether nothing was found missing.
func (d Damage) Intact() bool { return len(d.What) == 0 }

func (d *Damage) add(what string, grants bool) {
	d.What = append(d.What, what)
	d.GrantsLost = d.GrantsLost || grants
}

// New opens the backend m names: the one place that decides. NFTables
// connects to this network namespace's nftables; IPTables runs iptables,
// ip6tables and ipset; None is the in-memory backend (a dry run).
func New(m mode.Mode) (Backend, error) {
	switch m {
	case mode.NFTables:
		return OpenNFTables()
	case mode.IPTables:
		return NewIPTables(nil), nil
	case mode.None:
		return NewMemory(), nil
	}
	return nil, fmt.Errorf("firewall: unknown backend %q", m)
}
