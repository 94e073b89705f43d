// Package policy decides what an authenticated knock may open: which client
// may open which ports, for how long, for which address. It turns a Request
// into firewall grants or a refusal. It never reads packets and never
// touches the firewall.
package policy

import (
	"net/netip"
	"slices"
	"time"

	"postern/firewall"
	"postern/port"
)

// Client is what one identity may do.
type Client struct {
	Name            string
	Allow           []port.Spec
	MaxDuration     time.Duration
	DefaultDuration time.Duration
	AllowSource     bool // may ask for "grant the packet's source address"
}

// Request is what a decoder authenticated: who asks, for which address, to
// open what, for how long.
type Request struct {
	Client    string
	Src       netip.Addr // the packet's source address
	UseSource bool       // grant Src instead of Allow
	Allow     netip.Addr
	Ports     []port.Spec
	Duration  time.Duration // 0: the client's default
	Action    string
}

// Refusal says why a request was refused.
type Refusal string

// Refusals.
const (
	UnknownClient     Refusal = "unknown client"
	PortNotAllowed    Refusal = "port not allowed"
	DurationTooLong   Refusal = "duration too long"
	SourceNotAllowed  Refusal = "use source not allowed"
	ActionNotAllowed  Refusal = "action not allowed"
	AddressNotAllowed Refusal = "address not allowed"
)

// Refusals lists every Refusal, for metrics.
var Refusals = []Refusal{UnknownClient, PortNotAllowed, DurationTooLong, SourceNotAllowed, ActionNotAllowed, AddressNotAllowed}

// Policy maps client names to what they may do. It is read-only after New
// and safe for concurrent use.
type Policy struct {
	clients map[string]Client
}

// New builds a Policy.
func New(clients []Client) *Policy {
	p := &Policy{clients: make(map[string]Client, len(clients))}
	for _, c := range clients {
		p.clients[c.Name] = c
	}
	return p
}

// Decide returns the grants for r, or why there are none. A request is
// granted whole or not at all: a knock asking for one port it may not open
// opens nothing, so a mistake is noticed instead of half-working.
func (p *Policy) Decide(r *Request) ([]firewall.Grant, Refusal) {
	c, ok := p.clients[r.Client]
	if !ok {
		return nil, UnknownClient
	}
	addr := r.Allow
	if r.UseSource {
		if !c.AllowSource {
			return nil, SourceNotAllowed
		}
		addr = r.Src
	}
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsUnspecified() || addr.IsMulticast() {
		return nil, AddressNotAllowed
	}
	if r.Action != "" {
		// Named server-side actions are not configurable yet: refuse
		// rather than ignore what the client asked for.
		return nil, ActionNotAllowed
	}
	d := r.Duration
	if d == 0 {
		d = c.DefaultDuration
	}
	if d > c.MaxDuration {
		return nil, DurationTooLong
	}
	grants := make([]firewall.Grant, 0, len(r.Ports))
	for _, pt := range r.Ports {
		if !slices.Contains(c.Allow, pt) {
			return nil, PortNotAllowed
		}
		grants = append(grants, firewall.Grant{Addr: addr, Port: pt, Timeout: d})
	}
	return grants, ""
}
