// Package policy decides what an authenticated knock may open, whatever its
// language (postern SPA, fwknop, a door sequence, a covert knock): which
// identity may open which ports, for how long, for which address, and
// which commands may run. It turns a Request into a Decision — firewall
// grants and commands — or a refusal. It never reads packets and never
// touches the firewall, commands, logs or metrics.
package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/postern/postern/port"
)

// Language is a knock language; every decision is counted and logged
// under one.
type Language string

// The knock languages.
const (
	SPA    Language = "spa"
	Fwknop Language = "fwknop"
	Door   Language = "door"
	Covert Language = "covert"
)

// Client is what one identity of one language may do: a [[client]], an
// access.conf stanza, a door, a covert door's client.
type Client struct {
	Language        Language
	Name            string
	Allow           []port.Spec
	AllowPort       func(port.Spec) bool // if set, decides instead of Allow (fwknop OPEN_PORTS/RESTRICT_PORTS)
	MaxDuration     time.Duration
	DefaultDuration time.Duration
	AllowSource     bool // may ask for "grant the packet's source address"
	Commands        bool // may run the commands its language attaches
}

// Command is a start command, run now, and an optional stop command, run
// StopAfter later; both already have their placeholders filled in.
type Command struct {
	Start, Stop string
	StopAfter   time.Duration
	NoShell     bool   // an argument vector, not a /bin/sh command line
	User, Group string // run as (fwknop CMD_EXEC_USER/GROUP)
	Addr        netip.Addr
}

// Request is what a decoder authenticated: who asks, for which address, to
// open what, for how long, and which commands its configuration attaches.
type Request struct {
	Language  Language
	Client    string     // the identity, unique within its language
	Src       netip.Addr // the packet's source address
	UseSource bool       // grant Src instead of Allow
	Allow     netip.Addr
	Ports     []port.Spec
	Duration  time.Duration // 0: the identity's default
	Action    string
	Commands  []Command
}

// Grant opens Port for Addr for Timeout; Name says who asked.
type Grant struct {
	Addr    netip.Addr
	Port    port.Spec
	Timeout time.Duration
	Name    string
}

func (g Grant) String() string { return fmt.Sprintf("%v %v for %v", g.Addr, g.Port, g.Timeout) }

// Decision is what policy grants: firewall grants and commands to run.
type Decision struct {
	Grants   []Grant
	Commands []Command
	// Revokes close grants now: an authenticated "close" request (Aldaba's
	// client sends one when it is done), for ports the client could open.
	Revokes []Grant
}

// ActionClose is the one named action: close the asked-for ports for the
// address now instead of opening them. A client may close what it may
// open, which covers its own grants.
const ActionClose = "close"

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
	CommandNotAllowed Refusal = "command not allowed"
)

// Refusals lists every Refusal, for metrics.
var Refusals = []Refusal{UnknownClient, PortNotAllowed, DurationTooLong, SourceNotAllowed, ActionNotAllowed,
	AddressNotAllowed, CommandNotAllowed}

type key struct {
	lang Language
	name string
}

// Policy maps identities to what they may do. It is read-only after New
// and safe for concurrent use.
type Policy struct {
	clients map[key]Client
}

// New builds a Policy.
func New(clients []Client) *Policy {
	p := &Policy{clients: make(map[key]Client, len(clients))}
	for _, c := range clients {
		p.clients[key{c.Language, c.Name}] = c
	}
	return p
}

// Knows reports whether name is an identity of lang in this policy.
func (p *Policy) Knows(lang Language, name string) bool {
	_, ok := p.clients[key{lang, name}]
	return ok
}

// Decide returns what r may have, or why nothing. A request is granted
// whole or not at all: a knock asking for one port it may not open opens
// nothing, so a mistake is noticed instead of half-working.
func (p *Policy) Decide(r *Request) (Decision, Refusal) {
	c, ok := p.clients[key{r.Language, r.Client}]
	if !ok {
		return Decision{}, UnknownClient
	}
	if len(r.Commands) > 0 && !c.Commands {
		return Decision{}, CommandNotAllowed
	}
	if r.Action != "" && r.Action != ActionClose {
		// Other named server-side actions are not configurable yet:
		// refuse rather than ignore what the client asked for.
		return Decision{}, ActionNotAllowed
	}
	if len(r.Ports) == 0 {
		if r.Action == ActionClose {
			return Decision{}, PortNotAllowed
		}
		return Decision{Commands: r.Commands}, ""
	}
	addr := r.Allow
	if r.UseSource {
		if !c.AllowSource {
			return Decision{}, SourceNotAllowed
		}
		addr = r.Src
	}
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsUnspecified() || addr.IsMulticast() {
		return Decision{}, AddressNotAllowed
	}
	d := r.Duration
	if d == 0 {
		d = c.DefaultDuration
	}
	if d > c.MaxDuration {
		return Decision{}, DurationTooLong
	}
	grants := make([]Grant, 0, len(r.Ports))
	for _, pt := range r.Ports {
		if c.AllowPort != nil && !c.AllowPort(pt) || c.AllowPort == nil && !slices.Contains(c.Allow, pt) {
			return Decision{}, PortNotAllowed
		}
		grants = append(grants, Grant{Addr: addr, Port: pt, Timeout: d, Name: r.Client})
	}
	if r.Action == ActionClose {
		return Decision{Revokes: grants}, ""
	}
	return Decision{Grants: grants, Commands: r.Commands}, ""
}
