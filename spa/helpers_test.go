package spa

import (
	"crypto/hpke"
	"testing"
)

func openForTest(t *testing.T, f *fixture, pkt []byte) []byte {
	t.Helper()
	r, err := hpke.NewRecipient(pkt[offEnc:offCiphertext], f.v.key, suiteKDF, suiteAEAD, hpkeInfo)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := r.Open(pkt[:headerSize], pkt[offCiphertext:offMAC1])
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

func resealForTest(t *testing.T, f *fixture, pt []byte) []byte {
	t.Helper()
	pub := f.server.Public()
	pk, err := hpke.DHKEM(ecdhX25519).NewPublicKey(pub[:])
	if err != nil {
		t.Fatal(err)
	}
	enc, s, err := hpke.NewSender(pk, suiteKDF, suiteAEAD, hpkeInfo)
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, PacketSize)
	putHeader(pkt)
	copy(pkt[offEnc:], enc)
	ct, err := s.Seal(pkt[:headerSize], pt)
	if err != nil {
		t.Fatal(err)
	}
	copy(pkt[offCiphertext:], ct)
	newMAC1(pub).put(pkt[offMAC1:], pkt[:offMAC1])
	return pkt
}
