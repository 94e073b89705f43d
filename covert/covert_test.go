package covert

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/port"
)

var (
	src  = netip.MustParseAddr("198.18.0.2")
	dst  = netip.MustParseAddr("198.18.0.1")
	bind = Binding{Src: src, Dst: dst, DstPort: 4444}
	ssh  = port.Spec{Proto: port.TCP, Num: 22}
	now  = time.Date(2026, 11, 21, 8, 0, 0, 123_000_000, time.UTC)
)

func keys(t testing.TB, secret, door string) *Keys {
	k, err := DeriveKeys([]byte(secret), door)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	k := keys(t, "a secret of sixteen+", "ssh")
	msg, err := k.Seal(Request{Port: ssh, Time: now}, bind)
	if err != nil {
		t.Fatal(err)
	}
	r, err := k.Open(msg, bind)
	if err != nil || r.Port != ssh || !r.Time.Equal(now) {
		t.Fatalf("%+v %v", r, err)
	}
	for name, b := range map[string]Binding{
		"bad other source": {Src: netip.MustParseAddr("198.18.0.3"), Dst: dst, DstPort: 4444},
		"bad other server": {Src: src, Dst: netip.MustParseAddr("198.18.0.9"), DstPort: 4444},
		"bad other port":   {Src: src, Dst: dst, DstPort: 4445},
	} {
		if _, err := k.Open(msg, b); err != ErrAuth {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := keys(t, "another secret, 16+", "ssh").Open(msg, bind); err != ErrAuth {
		t.Error("wrong secret accepted")
	}
	if _, err := keys(t, "a secret of sixteen+", "other door").Open(msg, bind); err != ErrAuth {
		t.Error("same secret, other door accepted")
	}
	for i := range MessageSize {
		bad := msg
		bad[i] ^= 0x01
		if _, err := k.Open(bad, bind); err != ErrAuth {
			t.Errorf("bit flipped in byte %d accepted", i)
		}
	}
	// Two knocks a millisecond apart look unrelated.
	msg2, _ := k.Seal(Request{Port: ssh, Time: now.Add(time.Millisecond)}, bind)
	if bytes.Equal(msg[:8], msg2[:8]) || bytes.Equal(msg[12:], msg2[12:]) {
		t.Fatal("consecutive knocks share bytes")
	}
}

// A built SYN parses back, through the project's one packet parser, to the
// same carrier.
func TestBuildAndRead(t *testing.T) {
	sh := Shape{MSS: 1460, Window: 64240, WScale: 7, SACK: true, TTL: 64}
	for _, s := range []SYN{
		{Src: src, Dst: dst, SrcPort: 40001, DstPort: 4444, Carrier: [CarrierSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{Src: netip.MustParseAddr("2001:db8::2"), Dst: netip.MustParseAddr("2001:db8::1"), SrcPort: 50000, DstPort: 4444,
			Carrier: [CarrierSize]byte{0xff, 2, 3, 4, 5, 6, 7, 8, 0xab, 0xcd}, FlowLabelHigh4: 0xf},
	} {
		pkt := s.Build(sh)
		var f capture.Frame
		if err := capture.Parse(pkt, &f); err != nil {
			t.Fatal(err)
		}
		c, ok := CarrierOf(&f)
		if !ok || c != s.Carrier || f.SrcPort != s.SrcPort || f.DstPort != 4444 || f.TCPWindow != 64240 {
			t.Fatalf("%v: carrier %v %v, frame %+v", s.Dst, c, ok, f)
		}
		if tcpSum(s.Src, s.Dst, pkt[len(pkt)-tcpHeaderLen:]) != 0xffff {
			t.Fatal("TCP checksum does not verify")
		}
	}
}

func TestReassembly(t *testing.T) {
	k := keys(t, "a secret of sixteen+", "ssh")
	msg, _ := k.Seal(Request{Port: ssh, Time: now}, bind)
	c := Split(msg)
	try := func(p [2][CarrierSize]byte) bool {
		for _, m := range [][MessageSize]byte{Join(p[0], p[1]), Join(p[1], p[0])} {
			if _, err := k.Open(m, bind); err == nil {
				return true
			}
		}
		return false
	}
	r := NewReassembler(4, 5*time.Second)
	// In order and reordered.
	for _, order := range [][2]int{{0, 1}, {1, 0}} {
		if _, ok := r.Add(src, c[order[0]], now); ok {
			t.Fatal("pair from one SYN")
		}
		p, ok := r.Add(src, c[order[1]], now)
		if !ok || !try(p) {
			t.Fatalf("order %v not reassembled", order)
		}
		r.Done(src)
	}
	// A missing SYN: the lone one pairs with the next knock's first SYN
	// (fails), then the next knock completes.
	r.Add(src, c[0], now)
	msg2, _ := k.Seal(Request{Port: ssh, Time: now.Add(time.Second)}, bind)
	c2 := Split(msg2)
	if p, ok := r.Add(src, c2[0], now.Add(time.Second)); !ok || try(p) {
		t.Fatal("a half knock and a new knock verified together")
	}
	if p, ok := r.Add(src, c2[1], now.Add(time.Second)); !ok || !try(p) {
		t.Fatal("the next knock did not complete after a lost SYN")
	}
	// Too slow: carriers older than the window are forgotten.
	r.Done(src)
	r.Add(src, c[0], now)
	if _, ok := r.Add(src, c[1], now.Add(6*time.Second)); ok {
		t.Fatal("paired across the window")
	}
	// Bounded.
	for i := range 100 {
		r.Add(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), c[0], now)
	}
	if r.Len() != 4 || r.Evictions < 96 {
		t.Fatalf("len %d evictions %d", r.Len(), r.Evictions)
	}
	r.Expire(now.Add(time.Minute))
	if r.Len() != 0 {
		t.Fatal("expire left sources")
	}
}

func FuzzCarrierAndOpen(f *testing.F) {
	sh := Shape{MSS: 1460, Window: 64240, WScale: 7, SACK: true, TTL: 64}
	k := keys(f, "a secret of sixteen+", "ssh")
	msg, _ := k.Seal(Request{Port: ssh, Time: now}, bind)
	c := Split(msg)
	f.Add(SYN{Src: src, Dst: dst, SrcPort: 40001, DstPort: 4444, Carrier: c[0]}.Build(sh),
		SYN{Src: src, Dst: dst, SrcPort: 40002, DstPort: 4444, Carrier: c[1]}.Build(sh))
	f.Add([]byte{0x45}, []byte{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var fa, fb capture.Frame
		if capture.Parse(a, &fa) != nil || capture.Parse(b, &fb) != nil {
			return
		}
		ca, okA := CarrierOf(&fa)
		cb, okB := CarrierOf(&fb)
		if !okA || !okB {
			return
		}
		r := NewReassembler(8, time.Hour)
		r.Add(fa.Src, ca, now)
		p, ok := r.Add(fa.Src, cb, now)
		if !ok {
			return
		}
		for _, m := range [][MessageSize]byte{Join(p[0], p[1]), Join(p[1], p[0])} {
			if req, err := k.Open(m, bind); err == nil && m != msg {
				t.Fatalf("forged knock accepted: %+v", req)
			}
		}
	})
}

// BenchmarkPerSYN is the server's cost for one covert SYN: read the
// carrier and, every second SYN, try both orders for one client.
func BenchmarkPerSYN(b *testing.B) {
	sh := Shape{MSS: 1460, Window: 64240, WScale: 7, SACK: true, TTL: 64}
	k := keys(b, "a secret of sixteen+", "ssh")
	msg, _ := k.Seal(Request{Port: ssh, Time: now}, bind)
	c := Split(msg)
	frames := make([]capture.Frame, 2)
	for i := range frames {
		capture.Parse(SYN{Src: src, Dst: dst, SrcPort: 40001, DstPort: 4444, Carrier: c[i]}.Build(sh), &frames[i])
	}
	r := NewReassembler(65536, 5*time.Second)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f := &frames[i%2]
		cr, _ := CarrierOf(f)
		if p, ok := r.Add(f.Src, cr, now); ok {
			if _, err := k.Open(Join(p[0], p[1]), bind); err != nil {
				if _, err := k.Open(Join(p[1], p[0]), bind); err != nil {
					b.Fatal(err)
				}
			}
			r.Done(f.Src)
		}
		i++
	}
}
