package spa

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"hash"
)

// mac1 is the cheap first filter (WireGuard's mac1 idea): an HMAC-SHA256,
// truncated to 16 bytes, over the whole packet before it, keyed by a hash of a
// label and the server public key. Only senders that know the server public
// key can produce it, so scans and junk cost one keyed hash and no public-key
// operation. A mac1 is not safe for concurrent use; checking allocates nothing.
type mac1 struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func newMAC1(server ServerPublicKey) *mac1 {
	k := sha256.New()
	k.Write(mac1Label)
	k.Write([]byte(server.b))
	return &mac1{h: hmac.New(sha256.New, k.Sum(nil))}
}

func (m *mac1) compute(msg []byte) []byte {
	m.h.Reset()
	m.h.Write(msg)
	return m.h.Sum(m.sum[:0])[:mac1Size]
}

func (m *mac1) put(dst, msg []byte) { copy(dst, m.compute(msg)) }

func (m *mac1) ok(msg, tag []byte) bool {
	return subtle.ConstantTimeCompare(m.compute(msg), tag) == 1
}
