package fko

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
)

// The decoder on its own: a stanza with CMD_CYCLE turns a knock into the
// commands fwknopd 2.6.10 would run, with its substitutions.
func TestDecoderCommandCycle(t *testing.T) {
	ss, err := ParseAccessConf("a.conf", []byte("SOURCE ANY\nKEY secret-key-1\nOPEN_PORTS tcp/22, udp/53\n"+
		"CMD_CYCLE_OPEN /bin/open $IP $PROTO $PORT $TIMEOUT $CLIENT_TIMEOUT $PKT_SRC\nCMD_CYCLE_CLOSE /bin/close $SRC\nCMD_CYCLE_TIMER 90\n"))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := OpenReplayCache(filepath.Join(t.TempDir(), "digests"), time.Hour, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	d := NewDecoder(DecoderConfig{Stanzas: ss, MaxAge: 2 * time.Minute, Replay: rc})
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
