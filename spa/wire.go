package spa

import (
	"crypto/hpke"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/postern/postern/port"
)

// Packet layout (docs/PROTOCOL.md §2). Every knock of a suite has the same
// size, so all knocks look alike on the wire.
const (
	Version     = 1
	SuiteX25519 = 1 // DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305
	// SuiteXWing is the opt-in post-quantum suite: the MLKEM768-X25519
	// ("X-Wing") hybrid KEM, HKDF-SHA256, ChaCha20-Poly1305.
	SuiteXWing = 2

	headerSize    = 4
	plaintextSize = 256
	aeadTagSize   = 16
	mac1Size      = 16
	offEnc        = headerSize

	// PacketSize is the length of every suite-1 knock.
	PacketSize = headerSize + 32 + plaintextSize + aeadTagSize + mac1Size
	// PacketSizeXWing is the length of every suite-2 knock: one packet,
	// still under 1500 bytes with IPv6 and UDP headers.
	PacketSizeXWing = headerSize + 1120 + plaintextSize + aeadTagSize + mac1Size
)

// layout gives a suite's offsets.
type layout struct{ ct, mac1, size int }

func layoutFor(suite byte) (layout, bool) {
	var enc int
	switch suite {
	case SuiteX25519:
		enc = 32
	case SuiteXWing:
		enc = 1120
	default:
		return layout{}, false
	}
	ct := offEnc + enc
	return layout{ct: ct, mac1: ct + plaintextSize + aeadTagSize, size: ct + plaintextSize + aeadTagSize + mac1Size}, true
}

// IsKnock reports whether a datagram has the size and first byte of a
// postern SPA knock (to tell it from an fwknop packet on a shared port).
func IsKnock(b []byte) bool {
	n := len(b)
	if n > 3 && b[3] == flagPreauth {
		n -= preauthSize
	}
	return (n == PacketSize || n == PacketSizeXWing || n == PacketSizeSSH) && b[0] == Version
}

// Plaintext layout (docs/PROTOCOL.md §3).
const (
	ptClient   = 0   // 32: client Ed25519 public key
	ptTime     = 32  // 8: Unix nanoseconds, big-endian
	ptFlags    = 40  // 1
	ptAllow    = 41  // 16: address to grant, IPv6 or IPv4-mapped
	ptDest     = 57  // 16: destination the client addressed
	ptDuration = 73  // 4: seconds, 0 = server default
	ptNPorts   = 77  // 1: 1..MaxPorts
	ptPorts    = 78  // MaxPorts × 3: protocol, port (big-endian)
	ptActLen   = 126 // 1: 0..MaxActionLen
	ptAction   = 127 // MaxActionLen
	ptTo       = 159 // 16: the destination behind the server (flagTo), IPv6 or IPv4-mapped
	ptPad      = 175 // zeros up to the signature
	ptSig      = 192 // 64: Ed25519 signature
	signedLen  = ptSig

	flagUseSource = 0x01
	flagDest      = 0x02
	flagTo        = 0x04
	knownFlags    = flagUseSource | flagDest | flagTo

	// MaxPorts is how many ports one knock can ask for.
	MaxPorts = 16
	// MaxActionLen bounds the name of a server-side action.
	MaxActionLen = 32
)

// Domain-separation labels: each use of a key gets its own.
var (
	hpkeInfo   = []byte("postern spa v1")
	sigContext = []byte("postern spa v1 signature\x00")
	mac1Label  = []byte("postern spa v1 mac1\x00")
)

var (
	suiteKDF  = hpke.HKDFSHA256()
	suiteAEAD = hpke.ChaCha20Poly1305()
)

// Knock is what a valid packet asks for.
type Knock struct {
	Client    ClientPublicKey // the native client key; for an SSH knock, a hash of its identity (the replay key)
	Name      string          // for an SSH knock: its policy identity (ssh:NAME, principal:NAME)
	Time      time.Time
	UseSource bool       // grant the packet's source address instead of Allow
	Allow     netip.Addr // the address to grant (unset when UseSource)
	Dest      netip.Addr // the server address the client bound the knock to, if any
	Ports     []port.Spec
	Duration  time.Duration // 0: the server's default for this client
	Action    string
	// To, when valid, asks for Ports on that host behind the server (a
	// gateway) instead of on the server.
	To netip.Addr
	// TokenKey, when set (sealing only), adds pre-authentication: the key
	// postern token gave this client.
	TokenKey []byte
}

func putAddr(b []byte, a netip.Addr) {
	if a.IsValid() {
		a16 := a.As16()
		copy(b, a16[:])
	}
}

func getAddr(b []byte) netip.Addr {
	return netip.AddrFrom16([16]byte(b[:16])).Unmap()
}

// encodePlaintext writes everything but the signature.
func encodePlaintext(pt []byte, k *Knock) {
	copy(pt[ptClient:], k.Client[:])
	binary.BigEndian.PutUint64(pt[ptTime:], uint64(k.Time.UnixNano()))
	var flags byte
	if k.UseSource {
		flags |= flagUseSource
	} else {
		putAddr(pt[ptAllow:], k.Allow)
	}
	if k.Dest.IsValid() {
		flags |= flagDest
		putAddr(pt[ptDest:], k.Dest)
	}
	if k.To.IsValid() {
		flags |= flagTo
		putAddr(pt[ptTo:], k.To)
	}
	pt[ptFlags] = flags
	binary.BigEndian.PutUint32(pt[ptDuration:], uint32(k.Duration/time.Second))
	pt[ptNPorts] = byte(len(k.Ports))
	for i, p := range k.Ports {
		pt[ptPorts+3*i] = byte(p.Proto)
		binary.BigEndian.PutUint16(pt[ptPorts+3*i+1:], p.Num)
	}
	pt[ptActLen] = byte(len(k.Action))
	copy(pt[ptAction:], k.Action)
}

func allZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}

func validAction(s []byte) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// decodePlaintext parses a signed plaintext strictly: every unused byte must
// be zero and every field in range, so that one knock has one encoding.
func decodePlaintext(pt []byte, k *Knock) bool {
	flags := pt[ptFlags]
	if flags&^knownFlags != 0 {
		return false
	}
	copy(k.Client[:], pt[ptClient:])
	k.Time = time.Unix(0, int64(binary.BigEndian.Uint64(pt[ptTime:])))
	k.UseSource = flags&flagUseSource != 0
	if k.UseSource {
		if !allZero(pt[ptAllow : ptAllow+16]) {
			return false
		}
		k.Allow = netip.Addr{}
	} else {
		k.Allow = getAddr(pt[ptAllow:])
		if !grantable(k.Allow) {
			return false
		}
	}
	if flags&flagDest != 0 {
		k.Dest = getAddr(pt[ptDest:])
		if k.Dest.IsUnspecified() {
			return false
		}
	} else {
		k.Dest = netip.Addr{}
		if !allZero(pt[ptDest : ptDest+16]) {
			return false
		}
	}
	k.Duration = time.Duration(binary.BigEndian.Uint32(pt[ptDuration:])) * time.Second
	n := int(pt[ptNPorts])
	if n == 0 || n > MaxPorts || !allZero(pt[ptPorts+3*n:ptActLen]) {
		return false
	}
	k.Ports = k.Ports[:0]
	for i := range n {
		p := port.Spec{Proto: port.Protocol(pt[ptPorts+3*i]), Num: binary.BigEndian.Uint16(pt[ptPorts+3*i+1:])}
		if p.Num == 0 || (p.Proto != port.TCP && p.Proto != port.UDP && p.Proto != port.SCTP) {
			return false
		}
		k.Ports = append(k.Ports, p)
	}
	al := int(pt[ptActLen])
	if al > MaxActionLen || !validAction(pt[ptAction:ptAction+al]) || !allZero(pt[ptAction+al:ptTo]) ||
		!allZero(pt[ptPad:ptSig]) {
		return false
	}
	if flags&flagTo != 0 {
		k.To = getAddr(pt[ptTo:])
		if !grantable(k.To) {
			return false
		}
	} else {
		k.To = netip.Addr{}
		if !allZero(pt[ptTo:ptPad]) {
			return false
		}
	}
	k.Action = string(pt[ptAction : ptAction+al])
	return true
}

// grantable reports whether an address may be the target of a grant: a real
// unicast address, never "any", multicast or broadcast.
func grantable(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() &&
		!(a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}))
}
