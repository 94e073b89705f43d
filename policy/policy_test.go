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
