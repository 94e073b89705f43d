package spa

import (
	"crypto/hpke"
	"testing"
)

func openForTest(t *testing.T, f *fixture, pkt []byte) []byte {
	t.Helper()
	l := f.v.layout
	r, err := hpke.NewRecipient(pkt[offEnc:l.ct], f.v.key, suiteKDF, suiteAEAD, hpkeInfo)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := r.Open(pkt[:headerSize], pkt[l.ct:l.mac1])
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

func resealForTest(t *testing.T, f *fixture, pt []byte) []byte {
	t.Helper()
	pub := f.server.Public()
	l := f.v.layout
	pk, err := pub.kem().NewPublicKey([]byte(pub.b))
	if err != nil {
		t.Fatal(err)
	}
	enc, s, err := hpke.NewSender(pk, suiteKDF, suiteAEAD, hpkeInfo)
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, l.size)
	putHeader(pkt, pub.suite)
	copy(pkt[offEnc:], enc)
	ct, err := s.Seal(pkt[:headerSize], pt)
	if err != nil {
		t.Fatal(err)
	}
	copy(pkt[l.ct:], ct)
	newMAC1(pub).put(pkt[l.mac1:], pkt[:l.mac1])
	return pkt
}
