package spa

import (
	"net/netip"
	"testing"
	"time"
)

// FuzzVerify feeds arbitrary bytes to the verifier. Beyond "no panic", it
// checks that nothing but a packet made by Seal is ever accepted: the fuzzer
// cannot forge mac1, AEAD and signature, so an Accepted result for a mutated
// input means a check was skipped.
func FuzzVerify(f *testing.F) {
	fx := newFixture(f, "")
	k := fx.knock()
	valid := fx.seal(f, k)
	k.TokenKey = TokenKey(fx.server, fx.client.Public())
	pre := fx.seal(f, k) // pre-authenticated
	f.Add(valid)
	f.Add(pre)
	f.Add(valid[:PacketSize-1])
	f.Add([]byte{})
	f.Add(make([]byte, PacketSize))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		ts, _ := LoadTimestamps("")
		fx.v.cfg.Replay = ts
		var got Knock
		r := fx.v.Verify(fx.src, fx.dst, pkt, fx.now, &got)
		if r == Accepted && string(pkt) != string(valid) && string(pkt) != string(pre) {
			t.Fatalf("accepted a packet Seal did not make: %x", pkt)
		}
	})
}

// FuzzPlaintext drives the body decoder directly, past the cryptography the
// fuzzer could never get through, and checks that whatever it accepts
// encodes back to the same bytes (one knock, one encoding).
func FuzzPlaintext(f *testing.F) {
	fx := newFixture(f, "")
	k := fx.knock()
	k.Client = fx.client.Public()
	pt := make([]byte, plaintextSize)
	encodePlaintext(pt, &k)
	f.Add(pt)
	k.To = netip.MustParseAddr("10.77.1.2") // a forwarded destination
	fwd := make([]byte, plaintextSize)
	encodePlaintext(fwd, &k)
	f.Add(fwd)
	f.Add(make([]byte, plaintextSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < plaintextSize {
			return
		}
		b = b[:plaintextSize]
		var got Knock
		if !decodePlaintext(b, &got) {
			return
		}
		again := make([]byte, plaintextSize)
		encodePlaintext(again, &got)
		copy(again[ptSig:], b[ptSig:])
		if string(again) != string(b) {
			t.Fatalf("decoded %+v re-encodes differently:\n%x\n%x", got, b, again)
		}
		if !got.UseSource && !grantable(got.Allow) {
			t.Fatalf("accepted ungrantable address %v", got.Allow)
		}
		if got.To.IsValid() && !grantable(got.To) {
			t.Fatalf("accepted an ungrantable destination %v", got.To)
		}
	})
}

var sinkReason Reason

// BenchmarkRejectJunk measures the cost of a packet of the right size and
// header with a wrong mac1: what a scan or flood costs the server.
func BenchmarkRejectJunk(b *testing.B) {
	fx := newFixture(b, "")
	pkt := fx.seal(b, fx.knock())
	pkt[PacketSize-1] ^= 1
	src, dst, now := fx.src, fx.dst, time.Now()
	var k Knock
	b.ReportAllocs()
	for b.Loop() {
		sinkReason = fx.v.Verify(src, dst, pkt, now, &k)
	}
	if sinkReason != BadMAC1 {
		b.Fatal(sinkReason)
	}
}

// BenchmarkVerifyValid measures a full accept: mac1, rate limit, HPKE open,
// signature, body, freshness and the in-memory replay check.
func BenchmarkVerifyValid(b *testing.B) {
	fx := newFixture(b, "")
	fx.v.cfg.Limiter = nil
	base := fx.knock()
	pkts := make([][]byte, 1024)
	for i := range pkts {
		k := base
		k.Time = base.Time.Add(time.Duration(i))
		pkts[i] = fx.seal(b, k)
	}
	var k Knock
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(pkts) {
			i = 0
			b.StopTimer()
			fx.v.cfg.Replay, _ = LoadTimestamps("")
			b.StartTimer()
		}
		if r := fx.v.Verify(fx.src, fx.dst, pkts[i], fx.now, &k); r != Accepted {
			b.Fatal(r)
		}
		i++
	}
}

// BenchmarkSeal is the client's cost of building one knock.
func BenchmarkSeal(b *testing.B) {
	fx := newFixture(b, "")
	k := fx.knock()
	pub := fx.server.Public()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Seal(fx.client, pub, k); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyValidXWing is BenchmarkVerifyValid for suite 2: the
// ML-KEM-768 decapsulation on top of X25519.
func BenchmarkVerifyValidXWing(b *testing.B) {
	fixtureServerKey = GenerateXWingServerKey
	defer func() { fixtureServerKey = GenerateServerKey }()
	BenchmarkVerifyValid(b)
}
