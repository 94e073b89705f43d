package spa

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/port"
	"github.com/postern/postern/ratelimit"
	"github.com/postern/postern/replay"
)

type fixture struct {
	server  ServerPrivateKey
	client  ClientPrivateKey
	ts      *Timestamps
	v       *Verifier
	now     time.Time
	src     netip.Addr
	dst     netip.Addr
	limiter *ratelimit.Limiter
}

func newFixture(t testing.TB, statePath string) *fixture {
	t.Helper()
	f := &fixture{
		now: time.Unix(1_800_000_000, 0),
		src: netip.MustParseAddr("198.18.0.2"),
		dst: netip.MustParseAddr("198.18.0.1"),
	}
	var err error
	if f.server, err = fixtureServerKey(); err != nil {
		t.Fatal(err)
	}
	if f.client, err = GenerateClientKey(); err != nil {
		t.Fatal(err)
	}
	f.reload(t, statePath)
	return f
}

// reload builds a fresh Verifier over the same state file, as a restart does.
func (f *fixture) reload(t testing.TB, statePath string) {
	t.Helper()
	ts, err := LoadTimestamps(statePath)
	if err != nil {
		t.Fatal(err)
	}
	f.ts = ts
	f.limiter = ratelimit.New(1000, 1000, 1000)
	f.v, err = NewVerifier(VerifierConfig{
		Key:          f.server,
		Clients:      map[ClientPublicKey]string{f.client.Public(): "alice"},
		MaxSkew:      30 * time.Second,
		Destinations: []netip.Addr{netip.MustParseAddr("2001:db8::99")},
		Replay:       ts,
		Limiter:      f.limiter,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fixtureServerKey makes the fixture's server key; TestXWing switches the
// fixture to the post-quantum suite.
var fixtureServerKey = GenerateServerKey

func (f *fixture) knock() Knock {
	return Knock{
		Time:     f.now,
		Allow:    f.src,
		Ports:    []port.Spec{{Proto: port.TCP, Num: 22}, {Proto: port.UDP, Num: 53}},
		Duration: 30 * time.Second,
	}
}

func (f *fixture) seal(t testing.TB, k Knock) []byte {
	t.Helper()
	pkt, err := Seal(f.client, f.server.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

func (f *fixture) verify(pkt []byte) (Knock, Reason) {
	var k Knock
	r := f.v.Verify(f.src, f.dst, pkt, f.now, &k)
	return k, r
}

func TestRoundTrip(t *testing.T) {
	f := newFixture(t, "")
	want := f.knock()
	want.Action = "wake-nas"
	pkt := f.seal(t, want)
	if len(pkt) != PacketSize {
		t.Fatalf("packet is %d bytes, want %d", len(pkt), PacketSize)
	}
	got, r := f.verify(pkt)
	if r != Accepted {
		t.Fatalf("Verify = %v", r)
	}
	if got.Client != f.client.Public() || !got.Time.Equal(want.Time) || got.Allow != want.Allow ||
		!slices.Equal(got.Ports, want.Ports) || got.Duration != want.Duration || got.Action != "wake-nas" ||
		got.UseSource || got.Dest.IsValid() {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	if f.v.ClientName(&got) != "alice" {
		t.Fatal("client name not found")
	}
}

func TestOptions(t *testing.T) {
	f := newFixture(t, "")
	k := f.knock()
	k.UseSource = true
	k.Allow = netip.Addr{}
	k.Dest = f.dst
	got, r := f.verify(f.seal(t, k))
	if r != Accepted || !got.UseSource || got.Allow.IsValid() || got.Dest != f.dst {
		t.Fatalf("use source + dest: %v %+v", r, got)
	}
	k.Time = k.Time.Add(time.Millisecond)
	k.UseSource = false
	k.Allow = netip.MustParseAddr("2001:db8::2")
	k.Dest = netip.MustParseAddr("2001:db8::99") // a configured extra destination
	got, r = f.verify(f.seal(t, k))
	if r != Accepted || got.Allow != k.Allow || got.Dest != k.Dest || got.To.IsValid() {
		t.Fatalf("IPv6 allow + configured dest: %v %+v", r, got)
	}
	// A destination behind the server (gateway mode) travels signed.
	k.Time = k.Time.Add(time.Millisecond)
	k.To = netip.MustParseAddr("10.77.1.2")
	got, r = f.verify(f.seal(t, k))
	if r != Accepted || got.To != k.To {
		t.Fatalf("forwarded destination: %v %+v", r, got)
	}
}

func TestRefusals(t *testing.T) {
	other, _ := fixtureServerKey()
	stranger, _ := GenerateClientKey()
	tests := []struct {
		name  string
		build func(f *fixture) []byte
		want  Reason
	}{
		{"bad short", func(f *fixture) []byte { return f.seal(t, f.knock())[:100] }, BadLength},
		{"bad long", func(f *fixture) []byte { return append(f.seal(t, f.knock()), 0) }, BadLength},
		{"bad empty", func(f *fixture) []byte { return nil }, BadLength},
		{"bad version", func(f *fixture) []byte { p := f.seal(t, f.knock()); p[0] = 2; return p }, BadHeader},
		{"bad mac1", func(f *fixture) []byte { p := f.seal(t, f.knock()); p[len(p)-1] ^= 1; return p }, BadMAC1},
		{"bad wrong server key", func(f *fixture) []byte {
			p, _ := Seal(f.client, other.Public(), f.knock())
			return p
		}, BadMAC1},
		{"bad unknown client", func(f *fixture) []byte {
			p, _ := Seal(stranger, f.server.Public(), f.knock())
			return p
		}, UnknownClient},
		{"bad ciphertext with fixed mac1", func(f *fixture) []byte {
			p := f.seal(t, f.knock())
			l := f.v.layout
			p[l.ct+5] ^= 0x80
			newMAC1(f.server.Public()).put(p[l.mac1:], p[:l.mac1])
			return p
		}, DecryptFailed},
		{"bad stale", func(f *fixture) []byte { k := f.knock(); k.Time = f.now.Add(-2 * time.Minute); return f.seal(t, k) }, StaleTimestamp},
		{"bad future", func(f *fixture) []byte { k := f.knock(); k.Time = f.now.Add(2 * time.Minute); return f.seal(t, k) }, FutureTimestamp},
		{"bad destination", func(f *fixture) []byte {
			k := f.knock()
			k.Dest = netip.MustParseAddr("198.18.7.7")
			return f.seal(t, k)
		}, WrongDestination},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "")
			if _, r := f.verify(tt.build(f)); r != tt.want {
				t.Fatalf("Verify = %v, want %v", r, tt.want)
			}
		})
	}
}

// A client signature over a body cannot be moved into another packet: a
// man in the middle who knows the server public key decrypts nothing, but one
// who could re-seal (say, a malicious server sharing a key) must not be able
// to reuse the signature with another encapsulation.
func TestSignatureBindsEncapsulation(t *testing.T) {
	f := newFixture(t, "")
	pkt := f.seal(t, f.knock())
	// Decrypt as the server would, then re-seal the same plaintext with a
	// fresh encapsulation: the signature must no longer verify.
	pt := openForTest(t, f, pkt)
	forged := resealForTest(t, f, pt)
	if _, r := f.verify(forged); r != BadSignature {
		t.Fatalf("re-sealed body: Verify = %v, want %v", r, BadSignature)
	}
}

func TestReplay(t *testing.T) {
	state := filepath.Join(t.TempDir(), "timestamps")
	f := newFixture(t, state)
	pkt := f.seal(t, f.knock())
	if _, r := f.verify(pkt); r != Accepted {
		t.Fatalf("first: %v", r)
	}
	if _, r := f.verify(pkt); r != Replayed {
		t.Fatalf("resent: %v, want replay", r)
	}
	f.src = netip.MustParseAddr("198.18.0.77")
	if _, r := f.verify(pkt); r != Replayed {
		t.Fatalf("resent from another address: %v, want replay", r)
	}
	older := f.knock()
	older.Time = f.now.Add(-time.Second)
	if _, r := f.verify(f.seal(t, older)); r != Replayed {
		t.Fatalf("older timestamp: %v, want replay", r)
	}
	f.reload(t, state)
	if _, r := f.verify(pkt); r != Replayed {
		t.Fatalf("after restart: %v, want replay", r)
	}
	newer := f.knock()
	newer.Time = f.now.Add(time.Nanosecond)
	if _, r := f.verify(f.seal(t, newer)); r != Accepted {
		t.Fatalf("newer after restart: %v", r)
	}
}

// Server and client clocks ran an hour ahead together, then were both
// corrected: after ClampFuture(now + max_skew) the client gets in again,
// and nothing at or before the clamp passes.
func TestClockCorrectedAfterRunningAhead(t *testing.T) {
	f := newFixture(t, "")
	ahead := f.now.Add(time.Hour)
	f.now = ahead
	k := f.knock()
	k.Time = ahead
	if _, r := f.verify(f.seal(t, k)); r != Accepted {
		t.Fatalf("knock with both clocks ahead: %v", r)
	}
	f.now = ahead.Add(-time.Hour) // corrected
	k.Time = f.now
	if _, r := f.verify(f.seal(t, k)); r != Replayed {
		t.Fatalf("before the clamp: %v, want replay (the lock-out ClampFuture ends)", r)
	}
	limit := f.now.Add(30 * time.Second)
	if n := f.ts.ClampFuture(limit.UnixNano()); n != 1 {
		t.Fatalf("ClampFuture clamped %d, want 1", n)
	}
	if n := f.ts.ClampFuture(limit.UnixNano()); n != 0 {
		t.Fatalf("second ClampFuture clamped %d, want 0", n)
	}
	if _, r := f.verify(f.seal(t, k)); r != Replayed {
		t.Fatalf("knock at or before the clamp: %v, want replay", r)
	}
	f.now = limit.Add(time.Second) // max_skew later the client is in
	k.Time = f.now
	if _, r := f.verify(f.seal(t, k)); r != Accepted {
		t.Fatalf("after max_skew: %v", r)
	}
}

func TestCorruptReplayStateRefusesToLoad(t *testing.T) {
	state := filepath.Join(t.TempDir(), "timestamps")
	if err := atomicfile.Write(state, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTimestamps(state); err == nil {
		t.Fatal("corrupt state accepted")
	}
}

func TestRateLimit(t *testing.T) {
	f := newFixture(t, "")
	f.limiter = ratelimit.New(1, 2, 10)
	f.v.cfg.Limiter = f.limiter
	k := f.knock()
	for i := range 2 {
		k.Time = f.now.Add(time.Duration(i))
		if _, r := f.verify(f.seal(t, k)); r != Accepted {
			t.Fatalf("knock %d: %v", i, r)
		}
	}
	k.Time = f.now.Add(10)
	if _, r := f.verify(f.seal(t, k)); r != RateLimited {
		t.Fatalf("third knock in burst: %v, want rate limited", r)
	}
	f.now = f.now.Add(time.Second)
	if _, r := f.verify(f.seal(t, k)); r != Accepted {
		t.Fatalf("after refill: %v", r)
	}
}

func TestSealRefusesBadRequests(t *testing.T) {
	f := newFixture(t, "")
	bad := map[string]func(k *Knock){
		"bad no ports":       func(k *Knock) { k.Ports = nil },
		"bad too many ports": func(k *Knock) { k.Ports = make([]port.Spec, MaxPorts+1) },
		"bad port zero":      func(k *Knock) { k.Ports = []port.Spec{{Proto: port.TCP}} },
		"bad action":         func(k *Knock) { k.Action = "rm -rf /" },
		"bad allow":          func(k *Knock) { k.Allow = netip.IPv4Unspecified() },
		"bad fraction":       func(k *Knock) { k.Duration = 1500 * time.Millisecond },
		"bad no time":        func(k *Knock) { k.Time = time.Time{} },
		"bad destination":    func(k *Knock) { k.To = netip.IPv4Unspecified() },
	}
	for name, mod := range bad {
		k := f.knock()
		mod(&k)
		if _, err := Seal(f.client, f.server.Public(), k); err == nil {
			t.Errorf("%s: Seal accepted %+v", name, k)
		}
	}
}

func TestKeys(t *testing.T) {
	s, _ := GenerateServerKey()
	c, _ := GenerateClientKey()
	if got, err := ParseServerPrivateKey(s.Encode()); err != nil || got.Public() != s.Public() {
		t.Fatalf("server private round trip: %v", err)
	}
	if got, err := ParseClientPrivateKey(c.Encode() + "\n"); err != nil || got.Public() != c.Public() {
		t.Fatalf("client private round trip: %v", err)
	}
	if pub, err := PublicKeyOf(s.Encode()); err != nil || pub != s.Public().String() {
		t.Fatalf("PublicKeyOf(server) = %q, %v", pub, err)
	}
	if pub, err := PublicKeyOf(c.Encode()); err != nil || pub != c.Public().String() {
		t.Fatalf("PublicKeyOf(client) = %q, %v", pub, err)
	}
	// Nothing secret through String, %v, %+v or %#v.
	for _, text := range []string{fmt.Sprint(s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s), s.String(),
		fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), c.String()} {
		if strings.Contains(text, s.Encode()) || strings.Contains(text, c.Encode()) ||
			strings.Contains(text, strings.TrimSuffix(c.Encode()[4:], "=")[:20]) {
			t.Fatalf("a private key printed its secret: %q", text)
		}
	}
	if _, err := ParseServerPublicKey(c.Public().String()); err == nil {
		t.Fatal("client public key accepted as server public key")
	}
	if _, err := ParseClientPublicKey("not base64!"); err == nil {
		t.Fatal("garbage accepted")
	}
	if _, err := PublicKeyOf(s.Public().String()); err == nil {
		t.Fatal("PublicKeyOf accepted a public key")
	}
}

// Suite 2 (post-quantum hybrid): the same round trip, refusals and
// signature binding as suite 1, with its own packet size.
func TestXWing(t *testing.T) {
	fixtureServerKey = GenerateXWingServerKey
	defer func() { fixtureServerKey = GenerateServerKey }()
	f := newFixture(t, "")
	pkt := f.seal(t, f.knock())
	if len(pkt) != PacketSizeXWing || pkt[1] != SuiteXWing || !IsKnock(pkt) {
		t.Fatalf("packet of %d bytes, suite %d", len(pkt), pkt[1])
	}
	if _, r := f.verify(pkt); r != Accepted {
		t.Fatalf("Verify = %v", r)
	}
	if _, r := f.verify(pkt); r != Replayed {
		t.Fatalf("replay: %v", r)
	}
	t.Run("refusals", TestRefusals)
	t.Run("signature binds encapsulation", TestSignatureBindsEncapsulation)
	// A suite-1 packet to a suite-2 server, and the other way round.
	one, _ := GenerateServerKey()
	p1, _ := Seal(f.client, one.Public(), f.knock())
	if _, r := f.verify(p1); r != BadLength {
		t.Fatalf("suite-1 packet to a suite-2 server: %v", r)
	}
	if f.server.Encode() != f.server.Encode() {
		t.Fatal("encoding the key changed it")
	}
	priv, err := ParseServerPrivateKey(f.server.Encode())
	if err != nil || priv.Public() != f.server.Public() {
		t.Fatalf("private key round trip: %v", err)
	}
	pub, err := ParseServerPublicKey(f.server.Public().String())
	if err != nil || pub != f.server.Public() || pub.Suite() != SuiteXWing {
		t.Fatalf("public key round trip: %v", err)
	}
	if got, err := PublicKeyOf(f.server.Encode()); err != nil || got != f.server.Public().String() {
		t.Fatalf("PublicKeyOf: %v", err)
	}
}

// Replay lanes: a client's IPv4 and IPv6 knocks (sent together by a
// dual-stack knock, arriving in either order) are judged apart; within a
// lane timestamps strictly increase; state from before lanes bounds every
// lane; all of it survives a reload.
func TestReplayLanes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ts")
	key, err := GenerateClientKey()
	if err != nil {
		t.Fatal(err)
	}
	c := replay.ID(key.Public())
	legacy := fmt.Sprintf("%s %d\n", key.Public(), 100)
	if err := atomicfile.Write(path, []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	ts, err := LoadTimestamps(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		lane byte
		at   int64
		ok   bool
	}{
		{replay.LaneIPv4, 100, false}, // not after the old whole-client state
		{replay.LaneIPv6, 300, true},
		{replay.LaneIPv4, 200, true}, // older than the IPv6 knock: another lane
		{replay.LaneIPv4, 200, false},
		{replay.LaneSource, 150, true},
		{replay.LaneSource, 150, false},
	} {
		if err := ts.AdvanceLane(c, step.lane, step.at); (err == nil) != step.ok {
			t.Fatalf("lane %c at %d: %v, want ok=%v", step.lane, step.at, err, step.ok)
		}
	}
	again, err := LoadTimestamps(path)
	if err != nil {
		t.Fatal(err)
	}
	for lane, last := range map[byte]int64{replay.LaneIPv4: 200, replay.LaneIPv6: 300, replay.LaneSource: 150} {
		if again.AdvanceLane(c, lane, last) == nil || again.AdvanceLane(c, lane, last+1) != nil {
			t.Fatalf("lane %c after a reload", lane)
		}
	}
}

// The verifier judges a knock in the lane its grant address fixes: an
// IPv6 knock sealed just before an IPv4 one but verified after it is
// accepted; each is still refused when replayed.
func TestVerifierReplayLanes(t *testing.T) {
	f := newFixture(t, "")
	k6 := f.knock()
	k6.Allow, k6.Time = netip.MustParseAddr("2001:db8::2"), f.now.Add(1)
	k4 := f.knock()
	k4.Allow, k4.Time = netip.MustParseAddr("198.18.0.2"), f.now.Add(2)
	p4, p6 := f.seal(t, k4), f.seal(t, k6)
	for i, c := range []struct {
		pkt  []byte
		want Reason
	}{{p4, Accepted}, {p6, Accepted}, {p6, Replayed}, {p4, Replayed}} {
		if _, r := f.verify(c.pkt); r != c.want {
			t.Fatalf("step %d: %v, want %v", i, r, c.want)
		}
	}
}
