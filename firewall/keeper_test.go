package firewall

import (
	"net/netip"
	"testing"
	"time"

	"github.com/postern/postern/port"
)

// Unit tests of the keeper's bookkeeping on the in-memory backend; the
// kernel backends are tested through a Keeper in backend_test.go.

func TestKeeperRestoresWithRemainingTimeOnly(t *testing.T) {
	m := NewMemory()
	k := NewKeeper(m, nil)
	now := time.Unix(1_800_000_000, 0)
	m.now, k.now = func() time.Time { return now }, func() time.Time { return now }
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	rules := Rules{Protected: []port.Spec{ssh}}
	if err := k.Setup(rules); err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	k.Grant([]Grant{{Addr: a, Port: ssh, Timeout: 30 * time.Second, Name: "alice"},
		{Addr: b, Port: ssh, Timeout: 5 * time.Second, Name: "bob"}})
	now = now.Add(10 * time.Second) // b's grant is over
	m.Flush()
	d, err := k.Check()
	if err != nil || d.Intact() || !d.GrantsLost {
		t.Fatalf("Check = %+v, %v", d, err)
	}
	if r := m.Rules(); len(r.Protected) != 1 {
		t.Fatalf("rules not restored: %+v", r)
	}
	gs, _ := k.List()
	if len(gs) != 1 || gs[0].Addr != a || gs[0].Timeout != 20*time.Second || gs[0].Name != "alice" {
		t.Fatalf("restored grants %+v: want alice's only, with 20s left", gs)
	}
	if k.Restores() != 1 {
		t.Fatalf("Restores = %d", k.Restores())
	}
	if d, _ := k.Check(); !d.Intact() {
		t.Fatalf("second Check: %+v", d)
	}
}

func TestKeeperExtendsNeverShortens(t *testing.T) {
	m := NewMemory()
	k := NewKeeper(m, nil)
	a := netip.MustParseAddr("198.18.0.2")
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	k.Setup(Rules{Protected: []port.Spec{ssh}})
	k.Grant([]Grant{{Addr: a, Port: ssh, Timeout: time.Minute}})
	k.Grant([]Grant{{Addr: a, Port: ssh, Timeout: time.Second}})
	if gs, _ := k.List(); len(gs) != 1 || gs[0].Timeout < 50*time.Second {
		t.Fatalf("shortened: %+v", gs)
	}
	m.Revoke([]Grant{{Addr: a, Port: ssh}}) // behind the keeper's back
	k.Grant([]Grant{{Addr: a, Port: ssh, Timeout: time.Second}})
	if gs, _ := k.List(); len(gs) != 1 {
		t.Fatalf("a grant gone from the backend was skipped: %+v", gs)
	}
}

func TestKeeperCleanupRestoresNothing(t *testing.T) {
	m := NewMemory()
	k := NewKeeper(m, nil)
	k.Setup(Rules{})
	k.Cleanup()
	if d, _ := k.Check(); !d.Intact() {
		t.Fatalf("Check after Cleanup wants to restore: %+v", d)
	}
}

// What is deleted on purpose stays deleted: a grant the backend lost while
// the rules were intact (a revoke by another process, nft delete element)
// is not put back by a later restore after the table is flushed.
func TestKeeperNeverRestoresWhatWasDeleted(t *testing.T) {
	m := NewMemory()
	k := NewKeeper(m, nil)
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	k.Setup(Rules{Protected: []port.Spec{ssh}})
	a, b := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	k.Grant([]Grant{{Addr: a, Port: ssh, Timeout: time.Minute, Name: "spa:alice"},
		{Addr: b, Port: ssh, Timeout: time.Minute, Name: "spa:bob"}})
	m.Revoke([]Grant{{Addr: a, Port: ssh}}) // behind the keeper's back
	if d, err := k.Check(); err != nil || !d.Intact() {
		t.Fatalf("Check = %+v, %v", d, err)
	}
	if k.Forgotten() != 1 {
		t.Fatalf("Forgotten = %d, want 1", k.Forgotten())
	}
	m.Flush()
	if d, err := k.Check(); err != nil || !d.GrantsLost {
		t.Fatalf("Check after flush = %+v, %v", d, err)
	}
	gs, _ := k.List()
	if len(gs) != 1 || gs[0].Addr != b {
		t.Fatalf("restored %+v: want bob's grant only", gs)
	}
}

func TestKeeperPrune(t *testing.T) {
	m := NewMemory()
	k := NewKeeper(m, nil)
	ssh, web := port.Spec{Proto: port.TCP, Num: 22}, port.Spec{Proto: port.TCP, Num: 443}
	k.Setup(Rules{Protected: []port.Spec{ssh, web}})
	a, b := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	k.Grant([]Grant{{Addr: a, Port: ssh, Timeout: time.Minute, Name: "spa:alice"},
		{Addr: a, Port: web, Timeout: time.Minute, Name: "spa:alice"},
		{Addr: b, Port: ssh, Timeout: time.Minute, Name: "spa:mallory"}})
	gone, err := k.Prune(func(g Grant) bool { return g.Name == "spa:alice" && g.Port == ssh })
	if err != nil || len(gone) != 2 {
		t.Fatalf("Prune = %+v, %v: want alice's tcp/443 and mallory's grant", gone, err)
	}
	m.Flush()
	k.Check()
	if gs := must(k.List()); len(gs) != 1 || gs[0].Addr != a || gs[0].Port != ssh {
		t.Fatalf("after a flush and restore: %+v, want alice's tcp/22 only", gs)
	}
}

// A close request closes only the closer's own grants.
func TestKeeperRevokeOwned(t *testing.T) {
	m := NewMemory()
	k := NewKeeper(m, nil)
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	k.Setup(Rules{Protected: []port.Spec{ssh}})
	a := netip.MustParseAddr("198.18.0.2")
	k.Grant([]Grant{{Addr: a, Port: ssh, Timeout: time.Minute, Name: "spa:alice"}})
	if gone, err := k.RevokeOwned([]Grant{{Addr: a, Port: ssh}}, "spa:bob"); err != nil || len(gone) != 0 {
		t.Fatalf("bob closed alice's grant: %+v, %v", gone, err)
	}
	if gs, _ := k.List(); len(gs) != 1 {
		t.Fatalf("alice's grant is gone: %+v", gs)
	}
	if gone, err := k.RevokeOwned([]Grant{{Addr: a, Port: ssh}}, "spa:alice"); err != nil || len(gone) != 1 {
		t.Fatalf("alice could not close her own grant: %+v, %v", gone, err)
	}
	if gs, _ := k.List(); len(gs) != 0 {
		t.Fatalf("still live: %+v", gs)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
