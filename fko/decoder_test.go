package fko

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
)

// testReplayCache is an empty replay cache in a temporary directory,
// closed when the test ends.
func testReplayCache(t *testing.T) *ReplayCache {
	t.Helper()
	rc, err := OpenReplayCache(filepath.Join(t.TempDir(), "digests"), time.Hour, 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return rc
}

// The decoder on its own: a stanza with CMD_CYCLE turns a knock into the
// commands fwknopd 2.6.10 would run, with its substitutions.
func TestDecoderCommandCycle(t *testing.T) {
	ss, err := ParseAccessConf("a.conf", []byte("SOURCE ANY\nKEY secret-key-1\nOPEN_PORTS tcp/22, udp/53\n"+
		"CMD_CYCLE_OPEN /bin/open $IP $PROTO $PORT $TIMEOUT $CLIENT_TIMEOUT $PKT_SRC\nCMD_CYCLE_CLOSE /bin/close $SRC\nCMD_CYCLE_TIMER 90\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(DecoderConfig{Stanzas: ss, MaxAge: 2 * time.Minute, Replay: testReplayCache(t)})
	defer d.Close()
	now := time.Unix(1_800_000_000, 0)
	knock := func(m *Message) policy.Verdict {
		t.Helper()
		m.Rand, _ = NewRand()
		m.User, m.Timestamp = "alice", now.Unix()
		pt, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		wire, err := (&Keys{Key: []byte("secret-key-1")}).Seal(pt)
		if err != nil {
			t.Fatal(err)
		}
		var got policy.Verdict
		d.Decode(&capture.Frame{Src: netip.MustParseAddr("198.18.0.9"), Dst: netip.MustParseAddr("198.18.0.1"),
			Payload: []byte(wire), Time: now}, func(v *policy.Verdict) { got = *v })
		return got
	}
	v := knock(&Message{Type: AccessMsg, Message: "198.18.0.2,tcp/22,udp/53"})
	if v.Reason != "" || len(v.Request.Commands) != 1 || len(v.Request.Ports) != 0 {
		t.Fatalf("verdict %+v", v)
	}
	c := v.Request.Commands[0]
	if c.Start != "/bin/open 198.18.0.2 6 22 1800000090 0 198.18.0.9" || c.Stop != "/bin/close 198.18.0.2" || c.StopAfter != 90*time.Second {
		t.Fatalf("commands %+v", c)
	}
	v = knock(&Message{Type: ClientTimeoutAccessMsg, Message: "198.18.0.2,tcp/22", ClientTimeout: 30})
	if c := v.Request.Commands[0]; c.Start != "/bin/open 198.18.0.2 6 22 1800000030 30 198.18.0.9" || c.StopAfter != 30*time.Second {
		t.Fatalf("with a client timeout: %+v", c)
	}
}

// Fall-through, as fwknopd: a stanza that decrypts a packet but whose
// checks fail hands it on to the next matching stanza.
func TestDecoderFallThrough(t *testing.T) {
	ss, err := ParseAccessConf("a.conf", []byte("SOURCE ANY\nKEY shared-key-1\nREQUIRE_USERNAME bob\nOPEN_PORTS tcp/22\n\n"+
		"SOURCE ANY\nKEY shared-key-1\nOPEN_PORTS tcp/80\n\n"+
		"SOURCE ANY\nKEY shared-key-1\nOPEN_PORTS tcp/22\n"))
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := OpenReplayCache(filepath.Join(t.TempDir(), "digests"), time.Hour, 100)
	defer rc.Close()
	d := NewDecoder(DecoderConfig{Stanzas: ss, MaxAge: 2 * time.Minute, Replay: rc})
	defer d.Close()
	now := time.Unix(1_800_000_000, 0)
	send := func(access string) policy.Verdict {
		m := &Message{Type: AccessMsg, Message: access, User: "alice", Timestamp: now.Unix()}
		m.Rand, _ = NewRand()
		pt, _ := m.Encode()
		wire, _ := (&Keys{Key: []byte("shared-key-1")}).Seal(pt)
		var got policy.Verdict
		d.Decode(&capture.Frame{Src: netip.MustParseAddr("198.18.0.9"), Payload: []byte(wire), Time: now},
			func(v *policy.Verdict) { got = *v })
		return got
	}
	if v := send("198.18.0.2,tcp/22"); v.Reason != "" || v.Client != "a.conf:10" {
		t.Fatalf("tcp/22 for alice: %+v, want granted by the third stanza (a.conf:10)", v)
	}
	if v := send("198.18.0.2,tcp/80"); v.Reason != "" || v.Client != "a.conf:6" {
		t.Fatalf("tcp/80: %+v, want granted by the second stanza", v)
	}
	if v := send("198.18.0.2,tcp/443"); v.Reason != ReasonPort {
		t.Fatalf("tcp/443: %+v, want refused: port not allowed by any", v)
	}
}

// Junk costs bounded work: one source is limited before any stanza is
// tried; many (spoofed) sources together meet the trial budget, whose
// packets a second shrink as stanzas are added.
func TestDecoderJunkLimits(t *testing.T) {
	var conf strings.Builder
	for i := range 100 {
		fmt.Fprintf(&conf, "SOURCE ANY\nKEY key-%d\nOPEN_PORTS tcp/22\n\n", i)
	}
	ss, err := ParseAccessConf("a.conf", []byte(conf.String()))
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(DecoderConfig{Stanzas: ss, MaxAge: 2 * time.Minute})
	defer d.Close()
	now := time.Unix(1_800_000_000, 0)
	junk := []byte(strings.Repeat("abcdEFGH0123+/xy", 13)[:200])
	count := func(srcs int, per int) map[string]int {
		got := map[string]int{}
		for i := range srcs * per {
			src := netip.AddrFrom4([4]byte{10, byte(i / per >> 8), byte(i / per), 1})
			d.Decode(&capture.Frame{Src: src, Dst: netip.MustParseAddr("198.18.0.1"), Payload: junk, Time: now},
				func(v *policy.Verdict) { got[v.Reason]++ })
		}
		return got
	}
	if got := count(1, 1000); got[ReasonNoStanza] != perSourceBurst || got[ReasonLimited] != 1000-perSourceBurst {
		t.Fatalf("one source: %v", got)
	}
	now = now.Add(time.Minute) // buckets full again
	budget := trialsPerSecond / 100
	if got := count(5000, 1); got[ReasonNoStanza] != budget || got[ReasonBudget] != 5000-budget {
		t.Fatalf("5 000 sources: %v (budget %d packets)", got, budget)
	}
}

func TestNATRequest(t *testing.T) {
	dst := netip.MustParseAddr("198.18.0.1")
	plain := &Stanza{}
	forced := &Stanza{ForceNAT: netip.MustParseAddrPort("10.77.1.2:2200")}
	on := &Decoder{cfg: DecoderConfig{NAT: NATOptions{Forwarding: true, LocalNAT: true}}}
	off := &Decoder{}
	for _, tt := range []struct {
		name string
		d    *Decoder
		st   *Stanza
		m    Message
		want natTarget
		why  string
	}{
		{"plain access", off, plain, Message{Type: AccessMsg}, natTarget{}, ""},
		{"NAT request", on, plain, Message{Type: NATAccessMsg, NAT: "10.77.1.2,22"}, natTarget{to: netip.MustParseAddr("10.77.1.2"), port: 22}, ""},
		{"local NAT goes to the packet's destination", on, plain, Message{Type: LocalNATAccessMsg, NAT: "203.0.113.9,22"}, natTarget{to: dst, port: 22, local: true}, ""},
		{"FORCE_NAT overrides", on, forced, Message{Type: NATAccessMsg, NAT: "10.77.1.3,22"}, natTarget{to: netip.MustParseAddr("10.77.1.2"), port: 2200}, ""},
		{"FORCE_NAT without a request", on, forced, Message{Type: AccessMsg}, natTarget{to: netip.MustParseAddr("10.77.1.2"), port: 2200}, ""},
		{"bad forwarding off", off, plain, Message{Type: NATAccessMsg, NAT: "10.77.1.2,22"}, natTarget{}, "forwarding is not enabled"},
		{"bad local NAT off", off, plain, Message{Type: LocalNATAccessMsg, NAT: "10.77.1.2,22"}, natTarget{}, "local NAT is not enabled"},
		{"bad FORCE_NAT forwarding off", off, forced, Message{Type: AccessMsg}, natTarget{}, "forwarding is not enabled"},
		{"bad host name", on, plain, Message{Type: NATAccessMsg, NAT: "inside.lan,22"}, natTarget{}, "host names"},
		{"bad port", on, plain, Message{Type: NATAccessMsg, NAT: "10.77.1.2,0"}, natTarget{}, "malformed"},
		{"bad no comma", on, plain, Message{Type: NATAccessMsg, NAT: "10.77.1.2"}, natTarget{}, "malformed"},
		{"bad loopback", on, plain, Message{Type: NATAccessMsg, NAT: "127.0.0.1,22"}, natTarget{}, "not a unicast"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, why := tt.d.natRequest(tt.st, &tt.m, dst)
			if got != tt.want || !strings.Contains(why, tt.why) || (tt.why == "") != (why == "") {
				t.Errorf("got %+v %q, want %+v %q", got, why, tt.want, tt.why)
			}
		})
	}
}
