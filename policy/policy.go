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
	"strings"
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

// Lifetime says how a grant ends besides its time running out. The zero
// value is the plain grant: open until its duration is over.
type Lifetime struct {
	// Connections, when set, is how many new connections (TCP SYNs, first
	// UDP packets) the grant lets in: each consumes one in the kernel and
	// goes on; once they are used, another needs a new knock. 1 is grant
	// = "once": behind a NAT, one device gets in, not every device behind
	// the same address.
	Connections int `json:"connections,omitempty"`
	// Idle, when set, keeps the grant while its connections carry
	// traffic and ends it this long after the last packet; the grant's
	// duration stays the absolute cap.
	Idle time.Duration `json:"idle,omitempty"`
}

// Mode names the lifetime for logs and status: "", "once", "3 connections"
// or "idle 2m0s".
func (l Lifetime) Mode() string {
	switch {
	case l.Connections == 1:
		return "once"
	case l.Connections > 1:
		return fmt.Sprintf("%d connections", l.Connections)
	case l.Idle > 0:
		return "idle " + l.Idle.String()
	}
	return ""
}

// Client is what one identity of one language may do: a [[client]], an
// access.conf stanza, a door, a covert door's client.
type Client struct {
	Language        Language
	Name            string
	Lifetime        Lifetime // how its grants end
	Allow           []port.Spec
	AllowPort       func(port.Spec) bool // if set, decides instead of Allow (fwknop OPEN_PORTS/RESTRICT_PORTS)
	MaxDuration     time.Duration
	DefaultDuration time.Duration
	AllowSource     bool // may ask for "grant the packet's source address"
	Commands        bool // may run the commands its language attaches
	// Forward lists the destinations behind this host (gateway mode) the
	// identity may reach, each with its translation.
	Forward []Forward
	// ForwardAny lets the identity name any destination (fwknop's
	// ENABLE_IPT_FORWARDING), translated as AnyNAT says (its Masquerade
	// and SNAT); the request's external port is DNATed unless NoDNAT.
	ForwardAny bool
	AnyNAT     Forward
	NoDNAT     bool
	// LocalNAT lets it ask for a port of this host behind another port
	// of this host (fwknop's local NAT, ENABLE_IPT_LOCAL_NAT).
	LocalNAT bool
	// ForwardAll lets it have every port of every host behind this one
	// (fwknop's FORWARD_ALL): a VPN-like gateway.
	ForwardAll bool
}

// Destination is a port of a host behind this one (gateway mode).
type Destination struct {
	Addr netip.Addr
	Port port.Spec
}

// Forward is a destination behind this host that a grant may open, and how
// traffic to it is translated. To and Port are the internal host and port;
// External, when set, is the port on this host the client connects to
// (DNAT to To:Port, in Port's protocol); Masquerade or SNAT rewrite the
// source so that the internal host answers through this host.
type Forward struct {
	To         netip.Addr
	Port       port.Spec
	External   uint16
	Masquerade bool
	SNAT       netip.Addr
}

// SplitHost splits "HOST:REST", HOST an IPv4 address or an IPv6 one in
// brackets (the form Forward.String writes): a forwarded destination, or
// postern knock --open's HOST:PROTO/PORT,….
func SplitHost(s string) (netip.Addr, string, error) {
	host, rest, ok := strings.Cut(s, ":")
	if strings.HasPrefix(s, "[") {
		host, rest, ok = strings.Cut(s[1:], "]:")
	}
	if !ok {
		return netip.Addr{}, "", fmt.Errorf("%q: want HOST:… (an IPv6 HOST in brackets)", s)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("%q: %q is not an IP address", s, host)
	}
	return a.Unmap(), rest, nil
}

func (f Forward) String() string {
	host := f.To.String()
	if f.To.Is6() {
		host = "[" + host + "]"
	}
	s := host + ":" + f.Port.String()
	if f.External != 0 {
		s += fmt.Sprintf(" via %d", f.External)
	}
	switch {
	case f.Masquerade:
		s += " masquerade"
	case f.SNAT.IsValid():
		s += " snat " + f.SNAT.String()
	}
	return s
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
	// To, when valid, asks for Ports on that host behind this one
	// (gateway mode) instead of on this host. External is the port of
	// this host the client will connect to, when the request names one
	// (fwknop NAT requests); LocalNAT asks for Ports of this host (To)
	// behind External (fwknop local NAT).
	To       netip.Addr
	External uint16
	LocalNAT bool
	// ForwardAll asks for everything behind this host (fwknop's
	// FORWARD_ALL); To, if valid and specified, is where all of it is
	// DNATed.
	ForwardAll bool
}

// Grant opens Port for Addr for Timeout; Name says who asked. A gateway
// grant (To valid) opens Port of the host To, through this host, with the
// translations of Forward; a local NAT grant (Local) opens Port of this
// host behind its port External.
type Grant struct {
	Addr       netip.Addr
	Port       port.Spec
	Timeout    time.Duration
	Name       string
	Lifetime   // once, or idle-ended (ports of this host only)
	To         netip.Addr
	External   uint16
	Masquerade bool
	SNAT       netip.Addr
	Local      bool
	// All: every port of every host behind this one, from Addr (fwknop's
	// FORWARD_ALL); Port is unused and To, when valid, is where
	// everything Addr sends to this host is DNATed.
	All bool
}

// Forwarded reports whether g opens a destination behind this host.
func (g Grant) Forwarded() bool { return g.All || g.To.IsValid() && !g.Local }

func (g Grant) String() string {
	if d := g.Destination(); d != "" {
		return fmt.Sprintf("%v %v to %s for %v", g.Addr, g.Port, d, g.Timeout)
	}
	return fmt.Sprintf("%v %v for %v", g.Addr, g.Port, g.Timeout)
}

// Destination says where a grant leads and how it is translated, for logs
// and status: "" for a port of this host, "this host via 2222" for local
// NAT, "10.0.0.5:tcp/22 via 2222 masquerade" for a gateway grant,
// "everything via 10.0.0.5 snat 10.0.0.1" for forward-all.
func (g Grant) Destination() string {
	switch {
	case g.All:
		s := "everything"
		if g.To.IsValid() {
			s += " via " + g.To.String()
		}
		switch {
		case g.Masquerade:
			s += " masquerade"
		case g.SNAT.IsValid():
			s += " snat " + g.SNAT.String()
		}
		return s
	case g.Local:
		return fmt.Sprintf("this host via %d", g.External)
	case g.To.IsValid():
		return Forward{To: g.To, Port: g.Port, External: g.External, Masquerade: g.Masquerade, SNAT: g.SNAT}.String()
	}
	return ""
}

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
	ForwardNotAllowed Refusal = "destination not allowed"
)

// Refusals lists every Refusal, for metrics.
var Refusals = []Refusal{UnknownClient, PortNotAllowed, DurationTooLong, SourceNotAllowed, ActionNotAllowed,
	AddressNotAllowed, CommandNotAllowed, ForwardNotAllowed}

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

// forward returns how c may reach to:p, if it may. A request that names
// its external port (fwknop) gets it when the identity may name any
// destination, or when the listed destination has that external port.
func (c *Client) forward(to netip.Addr, p port.Spec, external uint16) (Forward, bool) {
	for _, f := range c.Forward {
		if f.To == to && f.Port == p && (external == 0 || external == f.External) {
			return f, true
		}
	}
	if c.ForwardAny && to.IsGlobalUnicast() {
		f := c.AnyNAT
		f.To, f.Port, f.External = to, p, external
		if c.NoDNAT {
			f.External = 0
		}
		return f, true
	}
	return Forward{}, false
}

// Owner is the name a grant carries in the ledger and the kernel: the
// language and the identity, so that a reload or a restart can tell whose
// grant it is and whether that identity may still have it.
func Owner(lang Language, client string) string { return string(lang) + ":" + client }

// ParseOwner splits what Owner joined; ok is false for a name no
// language of this version wrote (a grant of an older postern, or none).
func ParseOwner(name string) (lang Language, client string, ok bool) {
	l, c, ok := strings.Cut(name, ":")
	switch Language(l) {
	case SPA, Fwknop, Door, Covert:
		return Language(l), c, ok && c != ""
	}
	return "", "", false
}

// Permits reports whether the identity that owns g (its Name) may have
// it under this policy: it exists and may open that port or reach that
// destination. Reload and start-up drop every live grant it does not
// permit, so access never outlives the configuration that allowed it.
// A name without a language (an older postern's grant) is permitted if
// an identity of that name in any language would be.
func (p *Policy) Permits(g Grant) bool {
	lang, client, ok := ParseOwner(g.Name)
	if !ok {
		for _, l := range []Language{SPA, Fwknop, Door, Covert} {
			if c, found := p.clients[key{l, g.Name}]; found && c.permits(g) {
				return true
			}
		}
		return false
	}
	c, found := p.clients[key{lang, client}]
	return found && c.permits(g)
}

func (c *Client) permits(g Grant) bool {
	switch {
	case g.All:
		return c.ForwardAll
	case g.Local:
		return c.LocalNAT
	case g.To.IsValid():
		f, ok := c.forward(g.To, g.Port, g.External)
		return ok && f.Masquerade == g.Masquerade && f.SNAT == g.SNAT
	case c.AllowPort != nil:
		return c.AllowPort(g.Port)
	}
	return slices.Contains(c.Allow, g.Port)
}

// Knows reports whether name is an identity of lang in this policy.
func (p *Policy) Knows(lang Language, name string) bool {
	_, ok := p.clients[key{lang, name}]
	return ok
}

// Decide returns what r may have, or why nothing. A request is granted
// whole or not at all: a knock asking for one port it may not open opens
// nothing, so a mistake is noticed instead of half-working.
//
// Long on purpose: every check of a request in the documented order (docs/PROTOCOL.md §4, checks 13–17).
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
	if r.ForwardAll {
		if !c.ForwardAll {
			return Decision{}, ForwardNotAllowed
		}
		g := Grant{Addr: addr, All: true, Timeout: d, Name: Owner(r.Language, r.Client), Masquerade: c.AnyNAT.Masquerade,
			SNAT: c.AnyNAT.SNAT}
		if to := r.To.Unmap(); to.IsValid() && !to.IsUnspecified() && !c.NoDNAT {
			if to.Is4() != addr.Is4() {
				return Decision{}, ForwardNotAllowed
			}
			g.To = to
		}
		if g.SNAT.IsValid() && g.SNAT.Is4() != addr.Is4() {
			return Decision{}, ForwardNotAllowed
		}
		if r.Action == ActionClose {
			return Decision{Revokes: []Grant{g}}, ""
		}
		return Decision{Grants: []Grant{g}}, ""
	}
	grants := make([]Grant, 0, len(r.Ports))
	for _, pt := range r.Ports {
		g := Grant{Addr: addr, Port: pt, Timeout: d, Name: Owner(r.Language, r.Client)}
		if !r.To.IsValid() && !r.LocalNAT {
			g.Lifetime = c.Lifetime // a forwarded grant is always a plain one
		}
		switch {
		case r.LocalNAT:
			if !c.LocalNAT || r.External == 0 || !r.To.IsValid() {
				return Decision{}, ForwardNotAllowed
			}
			g.To, g.External, g.Local = r.To.Unmap(), r.External, true
		case r.To.IsValid():
			f, ok := c.forward(r.To.Unmap(), pt, r.External)
			if !ok {
				return Decision{}, ForwardNotAllowed
			}
			g.To, g.External, g.Masquerade, g.SNAT = f.To, f.External, f.Masquerade, f.SNAT
			if g.To.Is4() != addr.Is4() {
				return Decision{}, ForwardNotAllowed
			}
		case c.AllowPort != nil && !c.AllowPort(pt) || c.AllowPort == nil && !slices.Contains(c.Allow, pt):
			return Decision{}, PortNotAllowed
		}
		grants = append(grants, g)
	}
	if r.Action == ActionClose {
		return Decision{Revokes: grants}, ""
	}
	return Decision{Grants: grants, Commands: r.Commands}, ""
}
