// Package covert carries an authenticated knock in the header fields of
// ordinary-looking TCP SYNs (the Aldaba / knockknock idea, with modern
// cryptography): the fields a Linux SYN fills with random-looking values —
// sequence number, TCP timestamp, IPv4 ID or IPv6 flow label — carry an
// encrypted, MAC'd request, so to an observer a knock is two connection
// attempts to a closed port. The format is in docs/PROTOCOL.md ("Covert
// knocks"). The package builds and reads SYNs and reassembles them; it never
// sends anything and never touches the firewall.
package covert

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/postern/postern/port"
)

// Sizes of the message and its parts.
const (
	tagSize       = 12 // 96-bit MAC: online forgery only, one try per two SYNs
	plaintextSize = 8  // protocol, port, 40-bit millisecond timestamp
	MessageSize   = tagSize + plaintextSize
	// CarrierSize is what one SYN carries: sequence number (4 bytes), TCP
	// timestamp value (4) and IPv4 ID / 16 bits of the IPv6 flow label (2).
	CarrierSize = 10
	// SYNs is how many SYNs one knock takes.
	SYNs = MessageSize / CarrierSize
)

// epoch is the zero of the 40-bit millisecond timestamp (good until 2058).
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

var label = []byte("postern covert v1\x00")

// Keys are one client's keys for one covert door.
type Keys struct {
	mac, enc []byte
	block    cipher.Block
}

// DeriveKeys derives a door's keys from a client's secret: HKDF-SHA256 with
// the label as salt and the door name as info, so one secret used for two
// doors gives unrelated keys.
func DeriveKeys(secret []byte, door string) (*Keys, error) {
	if len(secret) < 16 {
		return nil, errors.New("covert: secret must be at least 16 bytes")
	}
	k, err := hkdf.Key(sha256.New, secret, label, door, 64)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(k[32:])
	if err != nil {
		return nil, err
	}
	return &Keys{mac: k[:32], enc: k[32:], block: b}, nil
}

// Request is what a covert knock asks for.
type Request struct {
	Port port.Spec
	Time time.Time // millisecond resolution
}

// Binding is what a knock is bound to but does not carry: the address to
// grant (the SYNs' source), the server address and the knocked port. A SYN
// pair replayed from another address, to another server or port, fails
// the MAC.
type Binding struct {
	Src, Dst netip.Addr
	DstPort  uint16
}

func (k *Keys) tag(b Binding, pt []byte) []byte {
	m := hmac.New(sha256.New, k.mac)
	m.Write(label)
	s, d := b.Src.Unmap().As16(), b.Dst.Unmap().As16()
	m.Write(s[:])
	m.Write(d[:])
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], b.DstPort)
	m.Write(p[:])
	m.Write(pt)
	return m.Sum(nil)[:tagSize]
}

func (k *Keys) xor(tag, data []byte) {
	var iv [aes.BlockSize]byte
	copy(iv[:], tag)
	cipher.NewCTR(k.block, iv[:]).XORKeyStream(data, data)
}

// Seal encodes r for binding b: tag ‖ AES-CTR(iv = tag, plaintext), the
// synthetic-IV construction, so the whole message is indistinguishable from
// random and the tag authenticates plaintext and binding.
func (k *Keys) Seal(r Request, b Binding) ([MessageSize]byte, error) {
	var msg [MessageSize]byte
	if r.Port.Proto != port.TCP && r.Port.Proto != port.UDP || r.Port.Num == 0 {
		return msg, errors.New("covert: a knock opens one tcp or udp port")
	}
	ms := r.Time.Sub(epoch).Milliseconds()
	if ms < 0 || ms >= 1<<40 {
		return msg, errors.New("covert: time out of range")
	}
	pt := msg[tagSize:]
	pt[0] = byte(r.Port.Proto)
	binary.BigEndian.PutUint16(pt[1:], r.Port.Num)
	var t [8]byte
	binary.BigEndian.PutUint64(t[:], uint64(ms))
	copy(pt[3:], t[3:])
	copy(msg[:tagSize], k.tag(b, pt))
	k.xor(msg[:tagSize], pt)
	return msg, nil
}

// ErrAuth is returned for a message that does not verify.
var ErrAuth = errors.New("covert: message does not verify")

// Open checks and decodes msg for binding b.
func (k *Keys) Open(msg [MessageSize]byte, b Binding) (Request, error) {
	pt := msg[tagSize:]
	k.xor(msg[:tagSize], pt)
	if subtle.ConstantTimeCompare(k.tag(b, pt), msg[:tagSize]) != 1 {
		return Request{}, ErrAuth
	}
	p := port.Spec{Proto: port.Protocol(pt[0]), Num: binary.BigEndian.Uint16(pt[1:])}
	if p.Proto != port.TCP && p.Proto != port.UDP || p.Num == 0 {
		return Request{}, ErrAuth
	}
	var t [8]byte
	copy(t[3:], pt[3:])
	ms := int64(binary.BigEndian.Uint64(t[:]))
	return Request{Port: p, Time: epoch.Add(time.Duration(ms) * time.Millisecond)}, nil
}

// Split cuts a message into per-SYN carriers.
func Split(msg [MessageSize]byte) [SYNs][CarrierSize]byte {
	var c [SYNs][CarrierSize]byte
	for i := range c {
		copy(c[i][:], msg[i*CarrierSize:])
	}
	return c
}

// Join puts carriers back together in the given order.
func Join(first, second [CarrierSize]byte) [MessageSize]byte {
	var m [MessageSize]byte
	copy(m[:], first[:])
	copy(m[CarrierSize:], second[:])
	return m
}
