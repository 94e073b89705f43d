package firewall

import (
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"

	"github.com/postern/postern/port"
)

var update = flag.Bool("update", false, "rewrite the golden netlink files")

// recorder is a netlink connection that answers every request with an
// acknowledgement (a listing with nothing) and remembers what was
// sent: the nftables backend's messages can be checked byte for byte
// without root or a kernel (the namespace tests check what the kernel
// makes of them).
type recorder struct{ msgs []netlink.Message }

func (r *recorder) dial(req []netlink.Message) ([]netlink.Message, error) {
	r.msgs = append(r.msgs, req...)
	var acks []netlink.Message
	for _, m := range req {
		if m.Header.Flags&netlink.Dump != 0 {
			continue // nothing listed
		}
		acks = append(acks, netlink.Message{Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence,
			PID: m.Header.PID}, Data: make([]byte, 4)})
	}
	return acks, nil
}

// dump prints the messages without what changes from run to run
// (sequence numbers and port IDs).
func (r *recorder) dump() string {
	var b strings.Builder
	for _, m := range r.msgs {
		fmt.Fprintf(&b, "type=%#04x flags=%#04x\n", uint16(m.Header.Type), uint16(m.Header.Flags))
		for d := m.Data; len(d) > 0; d = d[min(32, len(d)):] {
			fmt.Fprintf(&b, "  %s\n", hex.EncodeToString(d[:min(32, len(d))]))
		}
	}
	return b.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./firewall -run %s -update writes it)", err, t.Name())
	}
	if got != string(want) {
		t.Fatalf("netlink messages differ from %s:\n%s", path, got)
	}
}

func TestNFTablesMessagesByteForByte(t *testing.T) {
	var rec recorder
	c, err := nftables.New(nftables.WithTestDial(rec.dial))
	if err != nil {
		t.Fatal(err)
	}
	n := NewNFTables(c)
	rules := Rules{Protected: []port.Spec{{Proto: port.TCP, Num: 22}}, Knock: []port.Spec{{Proto: port.UDP, Num: 62201}},
		KnockRanges: []PortRange{{Proto: port.TCP, Lo: 20000, Hi: 20009}}}
	if err := n.Setup(rules); err != nil {
		t.Fatal(err)
	}
	golden(t, "nftables-setup.golden", rec.dump())

	// A gateway: a second transaction after the input part's.
	rec.msgs = nil
	rules.Forwarded = []Destination{{Addr: netip.MustParseAddr("10.77.1.2"), Port: port.Spec{Proto: port.TCP, Num: 22}}}
	if err := n.Setup(rules); err != nil {
		t.Fatal(err)
	}
	golden(t, "nftables-setup-gateway.golden", rec.dump())

	rec.msgs = nil
	if err := n.Grant([]Grant{{Addr: netip.MustParseAddr("198.18.0.2"), Port: port.Spec{Proto: port.TCP, Num: 22},
		Timeout: 30 * time.Second, Name: "alice"}, {Addr: netip.MustParseAddr("2001:db8::2"),
		Port: port.Spec{Proto: port.TCP, Num: 22}, Timeout: 30 * time.Second, Name: "alice"}}); err != nil {
		t.Fatal(err)
	}
	golden(t, "nftables-grant.golden", rec.dump())
}

// A connection that fails (a netlink socket overrun leaves a lasting one
// unusable) is replaced and the operation runs again on the new one.
func TestNFTablesReconnects(t *testing.T) {
	broken, err := nftables.New(nftables.WithTestDial(func([]netlink.Message) ([]netlink.Message, error) {
		return nil, fmt.Errorf("recvmsg: no buffer space available")
	}))
	if err != nil {
		t.Fatal(err)
	}
	fresh := &recorder{}
	n := NewNFTables(broken)
	g := []Grant{{Addr: netip.MustParseAddr("198.18.0.2"), Port: port.Spec{Proto: port.TCP, Num: 22}, Timeout: time.Minute}}
	if err := n.Grant(g); err == nil {
		t.Fatal("a grant on a broken connection without a way to reopen succeeded")
	}
	reopened := 0
	n.SetReopen(func() (*nftables.Conn, error) {
		reopened++
		return nftables.New(nftables.WithTestDial(fresh.dial))
	})
	if err := n.Grant(g); err != nil || reopened != 1 || len(fresh.msgs) == 0 {
		t.Fatalf("grant after reopening: %v, reopened %d times, %d messages on the new connection", err, reopened, len(fresh.msgs))
	}
	// What was asked wrongly is not the connection's fault: no reopening.
	if err := n.Grant([]Grant{{Addr: g[0].Addr, Port: g[0].Port}}); err == nil || reopened != 1 {
		t.Fatalf("a zero timeout: %v, reopened %d times", err, reopened)
	}
}
