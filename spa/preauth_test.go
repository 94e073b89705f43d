package spa

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

func TestPreauthentication(t *testing.T) {
	f := newFixture(t, filepath.Join(t.TempDir(), "ts"))
	bob, _ := GenerateClientKey()
	f.v.cfg.Clients[bob.Public()] = "bob"
	f.v.tokens = newTokenTable(f.server, f.v.cfg.Clients)
	aliceKey, bobKey := TokenKey(f.server, f.client.Public()), TokenKey(f.server, bob.Public())
	tick := 0
	sealed := func(key []byte, at time.Time, mod func([]byte)) []byte {
		tick++
		k := f.knock()
		k.Time, k.TokenKey = at.Add(time.Duration(tick)*time.Microsecond), key
		pkt := f.seal(t, k)
		if mod != nil {
			mod(pkt)
		}
		return pkt
	}
	verify := func(pkt []byte) Reason {
		var k Knock
		return f.v.Verify(f.src, f.dst, pkt, f.now, &k)
	}
	pkt := sealed(aliceKey, f.now, nil)
	if len(pkt) != PacketSize+preauthSize || !IsKnock(pkt) {
		t.Fatalf("pre-authenticated knock of %d bytes", len(pkt))
	}
	if r := verify(pkt); r != Accepted {
		t.Fatalf("pre-authenticated knock: %v", r)
	}
	// The window before (a clock a little behind) is still recognised:
	// the token passes (this knock is older than the first, so the
	// replay rule refuses it after the public-key work).
	if r := verify(sealed(aliceKey, f.now.Add(-tokenWindow+time.Second), nil)); r != Replayed {
		t.Fatalf("previous window: %v", r)
	}
	for name, tc := range map[string]struct {
		pkt  []byte
		want Reason
	}{
		"another client's token key": {sealed(bobKey, f.now, nil), BadToken},
		"a token of no client":       {sealed(aliceKey, f.now, func(p []byte) { p[PacketSize] ^= 1 }), BadToken},
		"a wrong mac2":               {sealed(aliceKey, f.now, func(p []byte) { p[len(p)-1] ^= 1 }), BadToken},
		"a token two windows old":    {sealed(aliceKey, f.now.Add(-3*tokenWindow), nil), BadToken},
		"flag without token":         {sealed(nil, f.now, func(p []byte) { p[3] = flagPreauth }), BadLength},
		"token stripped":             {sealed(aliceKey, f.now, nil)[:PacketSize], BadLength},
	} {
		if r := verify(tc.pkt); r != tc.want {
			t.Errorf("%s: %v, want %v", name, r, tc.want)
		}
	}
	// Removed from the configuration: its tokens name nobody.
	delete(f.v.cfg.Clients, bob.Public())
	f.v.tokens = newTokenTable(f.server, f.v.cfg.Clients)
	k := f.knock()
	k.Time, k.TokenKey = f.now.Add(time.Millisecond), bobKey
	bobPkt, err := Seal(bob, f.server.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	if r := verify(bobPkt); r != BadToken {
		t.Fatalf("removed client: %v", r)
	}
	// A captured pre-authenticated packet re-sent in bulk, from anywhere:
	// every re-send is a replay before it costs the client's budget, so
	// the client's own fresh knocks still get through.
	f.now = f.now.Add(time.Second)
	again := sealed(aliceKey, f.now, nil)
	if r := verify(again); r != Accepted {
		t.Fatalf("the knock to be replayed: %v", r)
	}
	for i := range 1000 {
		f.src = netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		if r := verify(again); r != Replayed {
			t.Fatalf("re-send %d: %v, want replay", i, r)
		}
	}
	f.src = netip.MustParseAddr("198.18.0.2")
	for i := range 5 {
		f.now = f.now.Add(300 * time.Millisecond)
		if r := verify(sealed(aliceKey, f.now, nil)); r != Accepted {
			t.Fatalf("fresh knock %d after 1000 replays: %v", i, r)
		}
	}
	// Fresh knocks in bulk still meet the client's own budget (burst 10).
	limited := 0
	for range 20 {
		if verify(sealed(aliceKey, f.now, nil)) == RateLimited {
			limited++
		}
	}
	if limited < 5 {
		t.Fatalf("%d of 20 knocks in a burst rate limited", limited)
	}
}
