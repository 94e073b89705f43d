package policy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/postern/postern/port"
)

func TestDecide(t *testing.T) {
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	dns := port.Spec{Proto: port.UDP, Num: 53}
	p := New([]Client{
		{Name: "alice", Allow: []port.Spec{ssh, dns}, MaxDuration: time.Minute, DefaultDuration: 30 * time.Second},
		{Name: "nat", Allow: []port.Spec{ssh}, MaxDuration: time.Minute, DefaultDuration: 10 * time.Second, AllowSource: true},
	})
	src := netip.MustParseAddr("198.18.0.9")
	own := netip.MustParseAddr("198.18.0.2")
	tests := []struct {
		name      string
		req       Request
		want      Refusal
		wantAddr  netip.Addr
		wantFor   time.Duration
		wantPorts int
	}{
		{"own address, default duration", Request{Client: "alice", Src: src, Allow: own, Ports: []port.Spec{ssh, dns}}, "", own, 30 * time.Second, 2},
		{"use source allowed", Request{Client: "nat", Src: src, UseSource: true, Ports: []port.Spec{ssh}, Duration: time.Minute}, "", src, time.Minute, 1},
		{"v4-mapped address unmapped", Request{Client: "alice", Src: src, Allow: netip.MustParseAddr("::ffff:198.18.0.2"), Ports: []port.Spec{ssh}}, "", own, 30 * time.Second, 1},
		{"bad unknown client", Request{Client: "mallory", Src: src, Allow: own, Ports: []port.Spec{ssh}}, UnknownClient, netip.Addr{}, 0, 0},
		{"bad port outside allow", Request{Client: "alice", Src: src, Allow: own, Ports: []port.Spec{ssh, {Proto: port.TCP, Num: 23}}}, PortNotAllowed, netip.Addr{}, 0, 0},
		{"bad duration", Request{Client: "alice", Src: src, Allow: own, Ports: []port.Spec{ssh}, Duration: time.Hour}, DurationTooLong, netip.Addr{}, 0, 0},
		{"bad use source", Request{Client: "alice", Src: src, UseSource: true, Ports: []port.Spec{ssh}}, SourceNotAllowed, netip.Addr{}, 0, 0},
		{"bad action", Request{Client: "alice", Src: src, Allow: own, Ports: []port.Spec{ssh}, Action: "reboot"}, ActionNotAllowed, netip.Addr{}, 0, 0},
		{"bad unspecified", Request{Client: "alice", Src: src, Allow: netip.IPv4Unspecified(), Ports: []port.Spec{ssh}}, AddressNotAllowed, netip.Addr{}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec, r := p.Decide(&tt.req)
			gs := dec.Grants
			if r != tt.want {
				t.Fatalf("refusal %q, want %q", r, tt.want)
			}
			if r != "" {
				if gs != nil {
					t.Fatalf("refused with grants %v", gs)
				}
				return
			}
			if len(gs) != tt.wantPorts {
				t.Fatalf("grants %v", gs)
			}
			for _, g := range gs {
				if g.Addr != tt.wantAddr || g.Timeout != tt.wantFor {
					t.Fatalf("grant %v, want %v for %v", g, tt.wantAddr, tt.wantFor)
				}
			}
		})
	}
}

// A close request revokes what it names, for ports the client may open;
// it never grants.
func TestDecideClose(t *testing.T) {
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	p := New([]Client{{Name: "alice", Allow: []port.Spec{ssh}, MaxDuration: time.Minute, DefaultDuration: 30 * time.Second}})
	own := netip.MustParseAddr("198.18.0.2")
	dec, r := p.Decide(&Request{Client: "alice", Src: own, Allow: own, Ports: []port.Spec{ssh}, Action: ActionClose})
	if r != "" || len(dec.Grants) != 0 || len(dec.Revokes) != 1 || dec.Revokes[0].Addr != own || dec.Revokes[0].Port != ssh {
		t.Fatalf("close: %+v %q", dec, r)
	}
	if _, r := p.Decide(&Request{Client: "alice", Src: own, Allow: own, Ports: []port.Spec{{Proto: port.TCP, Num: 80}}, Action: ActionClose}); r != PortNotAllowed {
		t.Fatalf("closing a port alice may not open: %q", r)
	}
	if _, r := p.Decide(&Request{Client: "alice", Src: own, Allow: own, Action: ActionClose}); r != PortNotAllowed {
		t.Fatalf("a close without ports: %q", r)
	}
}

func TestDecideForward(t *testing.T) {
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	inside := netip.MustParseAddr("10.77.1.2")
	inside6 := netip.MustParseAddr("fd77::2")
	gw := netip.MustParseAddr("10.77.1.9")
	p := New([]Client{
		{Name: "alice", Allow: []port.Spec{ssh}, MaxDuration: time.Minute, DefaultDuration: 30 * time.Second,
			Forward: []Forward{{To: inside, Port: ssh, External: 2222, Masquerade: true}, {To: inside6, Port: ssh}}},
		{Language: Fwknop, Name: "stanza", AllowPort: func(port.Spec) bool { return true }, MaxDuration: time.Minute,
			ForwardAny: true, AnyNAT: Forward{SNAT: gw}},
		{Language: Fwknop, Name: "nodnat", AllowPort: func(port.Spec) bool { return true }, MaxDuration: time.Minute,
			ForwardAny: true, NoDNAT: true},
		{Language: Fwknop, Name: "local", AllowPort: func(port.Spec) bool { return true }, MaxDuration: time.Minute, LocalNAT: true},
		{Language: Fwknop, Name: "all", AllowPort: func(port.Spec) bool { return true }, MaxDuration: time.Minute,
			ForwardAny: true, ForwardAll: true, AnyNAT: Forward{Masquerade: true}},
	})
	own := netip.MustParseAddr("198.18.0.2")
	own6 := netip.MustParseAddr("2001:db8::2")
	tests := []struct {
		name string
		req  Request
		want Refusal
		out  Grant
	}{
		{"listed destination, its translation", Request{Client: "alice", Allow: own, To: inside, Ports: []port.Spec{ssh}}, "",
			Grant{Addr: own, To: inside, Port: ssh, External: 2222, Masquerade: true}},
		{"IPv6 destination", Request{Client: "alice", Allow: own6, To: inside6, Ports: []port.Spec{ssh}}, "",
			Grant{Addr: own6, To: inside6, Port: ssh}},
		{"bad unlisted host", Request{Client: "alice", Allow: own, To: netip.MustParseAddr("10.77.1.3"), Ports: []port.Spec{ssh}}, ForwardNotAllowed, Grant{}},
		{"bad unlisted port", Request{Client: "alice", Allow: own, To: inside, Ports: []port.Spec{{Proto: port.TCP, Num: 23}}}, ForwardNotAllowed, Grant{}},
		{"bad family mix", Request{Client: "alice", Allow: own, To: inside6, Ports: []port.Spec{ssh}}, ForwardNotAllowed, Grant{}},
		{"bad other external port", Request{Client: "alice", Allow: own, To: inside, External: 22, Ports: []port.Spec{ssh}}, ForwardNotAllowed, Grant{}},
		{"bad local NAT not allowed", Request{Client: "alice", Allow: own, To: own, LocalNAT: true, External: 2222, Ports: []port.Spec{ssh}}, ForwardNotAllowed, Grant{}},
		{"fwknop any destination, DNAT from its port", Request{Language: Fwknop, Client: "stanza", Allow: own, To: inside, External: 2222, Ports: []port.Spec{ssh}}, "",
			Grant{Addr: own, To: inside, Port: ssh, External: 2222, SNAT: gw}},
		{"fwknop DISABLE_DNAT", Request{Language: Fwknop, Client: "nodnat", Allow: own, To: inside, External: 2222, Ports: []port.Spec{ssh}}, "",
			Grant{Addr: own, To: inside, Port: ssh}},
		{"bad fwknop loopback destination", Request{Language: Fwknop, Client: "stanza", Allow: own, To: netip.MustParseAddr("127.0.0.1"), Ports: []port.Spec{ssh}}, ForwardNotAllowed, Grant{}},
		{"fwknop local NAT", Request{Language: Fwknop, Client: "local", Allow: own, To: netip.MustParseAddr("198.18.0.1"), LocalNAT: true, External: 2222, Ports: []port.Spec{ssh}}, "",
			Grant{Addr: own, To: netip.MustParseAddr("198.18.0.1"), Port: ssh, External: 2222, Local: true}},
		{"fwknop FORWARD_ALL, no DNAT", Request{Language: Fwknop, Client: "all", Allow: own, ForwardAll: true, To: netip.IPv4Unspecified(), Ports: []port.Spec{ssh}}, "",
			Grant{Addr: own, All: true, Masquerade: true}},
		{"fwknop FORWARD_ALL with FORCE_NAT", Request{Language: Fwknop, Client: "all", Allow: own, ForwardAll: true, To: inside, Ports: []port.Spec{ssh}}, "",
			Grant{Addr: own, All: true, To: inside, Masquerade: true}},
		{"bad FORWARD_ALL not allowed", Request{Language: Fwknop, Client: "stanza", Allow: own, ForwardAll: true, Ports: []port.Spec{ssh}}, ForwardNotAllowed, Grant{}},
		{"bad forward without the switch", Request{Language: Fwknop, Client: "local", Allow: own, To: inside, Ports: []port.Spec{ssh}}, ForwardNotAllowed, Grant{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec, r := p.Decide(&tt.req)
			if r != tt.want {
				t.Fatalf("refusal %q, want %q", r, tt.want)
			}
			if r != "" {
				return
			}
			if len(dec.Grants) != 1 {
				t.Fatalf("grants %v", dec.Grants)
			}
			g := dec.Grants[0]
			g.Timeout, g.Name = 0, ""
			if g != tt.out {
				t.Errorf("grant %+v, want %+v", g, tt.out)
			}
		})
	}
}

func TestSplitHost(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.5:tcp/22":           "10.0.0.5 tcp/22",
		"[fd00::5]:tcp/22,udp/53":   "fd00::5 tcp/22,udp/53",
		"[::ffff:10.0.0.5]:tcp/443": "10.0.0.5 tcp/443",
		"fd00::5:tcp/22":            "error",
		"gw:tcp/22":                 "error",
		"[fd00::5]tcp/22":           "error",
		"tcp/22":                    "error",
	} {
		a, rest, err := SplitHost(in)
		got := a.String() + " " + rest
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("SplitHost(%q) = %q (%v), want %q", in, got, err, want)
		}
	}
}

func TestPermits(t *testing.T) {
	ssh, web := port.Spec{Proto: port.TCP, Num: 22}, port.Spec{Proto: port.TCP, Num: 443}
	inside := netip.MustParseAddr("10.0.0.5")
	p := New([]Client{{Language: SPA, Name: "alice", Allow: []port.Spec{ssh}, MaxDuration: time.Minute,
		Forward: []Forward{{To: inside, Port: ssh, External: 2222, Masquerade: true}}},
		{Language: Door, Name: "web", Allow: []port.Spec{web}, MaxDuration: time.Minute}})
	a := netip.MustParseAddr("198.18.0.2")
	for _, c := range []struct {
		name string
		g    Grant
		want bool
	}{
		{"own port", Grant{Addr: a, Port: ssh, Name: Owner(SPA, "alice")}, true},
		{"bad port no longer allowed", Grant{Addr: a, Port: web, Name: Owner(SPA, "alice")}, false},
		{"bad client removed", Grant{Addr: a, Port: ssh, Name: Owner(SPA, "bob")}, false},
		{"bad same name other language", Grant{Addr: a, Port: ssh, Name: Owner(Door, "alice")}, false},
		{"forwarded destination", Grant{Addr: a, Port: ssh, To: inside, External: 2222, Masquerade: true, Name: Owner(SPA, "alice")}, true},
		{"bad forward without its translation", Grant{Addr: a, Port: ssh, To: inside, External: 2222, Name: Owner(SPA, "alice")}, false},
		{"older postern's bare name", Grant{Addr: a, Port: web, Name: "web"}, true},
		{"bad bare name unknown", Grant{Addr: a, Port: web, Name: "bob"}, false},
		{"bad no name", Grant{Addr: a, Port: ssh}, false},
	} {
		if got := p.Permits(c.g); got != c.want {
			t.Errorf("%s: Permits(%+v) = %v, want %v", c.name, c.g, got, c.want)
		}
	}
}

// Found by scripts/mutation.sh: the fwknop-style port predicate
// (OPEN_PORTS/RESTRICT_PORTS) and a forward-all SNAT address of the wrong
// family had no test.
func TestAllowPortAndForwardAllFamilies(t *testing.T) {
	ssh, telnet := port.Spec{Proto: port.TCP, Num: 22}, port.Spec{Proto: port.TCP, Num: 23}
	a := netip.MustParseAddr("198.18.0.2")
	p := New([]Client{
		{Language: Fwknop, Name: "stanza", AllowPort: func(s port.Spec) bool { return s == ssh }, MaxDuration: time.Minute},
		{Language: Fwknop, Name: "all", ForwardAll: true, AnyNAT: Forward{SNAT: netip.MustParseAddr("2001:db8::9")},
			MaxDuration: time.Minute},
	})
	if _, r := p.Decide(&Request{Language: Fwknop, Client: "stanza", Allow: a, Ports: []port.Spec{ssh}}); r != "" {
		t.Fatalf("allowed port: %v", r)
	}
	if _, r := p.Decide(&Request{Language: Fwknop, Client: "stanza", Allow: a, Ports: []port.Spec{telnet}}); r != PortNotAllowed {
		t.Fatalf("bad port outside the predicate: %v", r)
	}
	if !p.Permits(Grant{Addr: a, Port: ssh, Name: Owner(Fwknop, "stanza")}) ||
		p.Permits(Grant{Addr: a, Port: telnet, Name: Owner(Fwknop, "stanza")}) {
		t.Fatal("Permits does not follow the port predicate")
	}
	if _, r := p.Decide(&Request{Language: Fwknop, Client: "all", Allow: a, Ports: []port.Spec{ssh}, ForwardAll: true}); r != ForwardNotAllowed {
		t.Fatalf("bad forward-all with an IPv6 SNAT address for an IPv4 client: %v", r)
	}
}
