package spa

import (
	"crypto/ed25519"
	"crypto/hpke"
	"errors"
	"fmt"
	"time"
)

// Seal builds the packet for k, signed by c and encrypted to server. k.Client
// is filled in from c.
func Seal(c ClientPrivateKey, server ServerPublicKey, k Knock) ([]byte, error) {
	return seal(c, server, k, hpkeEncap)
}

// sealer is the HPKE sender context a packet is sealed with.
type sealer interface {
	Seal(aad, plaintext []byte) ([]byte, error)
}

// encapFunc makes the encapsulation and its sender context: HPKE's own
// (hpkeEncap), or in tests one with a chosen ephemeral key, so that test
// vectors reproduce byte for byte.
type encapFunc func(pk hpke.PublicKey) (enc []byte, s sealer, err error)

func hpkeEncap(pk hpke.PublicKey) ([]byte, sealer, error) {
	return hpke.NewSender(pk, suiteKDF, suiteAEAD, hpkeInfo)
}

func seal(c ClientPrivateKey, server ServerPublicKey, k Knock, encap encapFunc) ([]byte, error) {
	if err := checkKnock(&k); err != nil {
		return nil, err
	}
	k.Client = c.Public()
	l, ok := layoutFor(server.suite)
	if !ok {
		return nil, errors.New("spa: server key of unknown suite")
	}
	return sealPacket(encap, server, l, KindNative, plaintextSize, k.TokenKey, k.Time, func(headerAndEnc, pt []byte) error {
		encodePlaintext(pt, &k)
		copy(pt[ptSig:], ed25519.Sign(c.k, signedMessage(headerAndEnc, pt)))
		return nil
	})
}

// sealPacket makes a packet of layout l: header (with kind), HPKE
// encapsulation to server, the plaintext that fill writes (it is given the
// header and encapsulation its signature must cover) sealed, and mac1.
func sealPacket(encap encapFunc, server ServerPublicKey, l layout, kind byte, ptSize int, tokenKey []byte, at time.Time,
	fill func(headerAndEnc, pt []byte) error) ([]byte, error) {
	if tokenKey != nil && len(tokenKey) != tokenKeySize {
		return nil, errTokenKey
	}
	pk, err := server.kem().NewPublicKey([]byte(server.b))
	if err != nil {
		return nil, err
	}
	enc, sender, err := encap(pk)
	if err != nil {
		return nil, err
	}
	pkt := make([]byte, l.size)
	putHeader(pkt, server.suite)
	pkt[2] = kind
	if tokenKey != nil {
		pkt[3] = flagPreauth // inside the AEAD's associated data and mac1
	}
	copy(pkt[offEnc:], enc)
	pt := make([]byte, ptSize)
	defer clear(pt)
	if err := fill(pkt[:l.ct], pt); err != nil {
		return nil, err
	}
	ct, err := sender.Seal(pkt[:headerSize], pt)
	if err != nil {
		return nil, err
	}
	copy(pkt[l.ct:], ct)
	newMAC1(server).put(pkt[l.mac1:], pkt[:l.mac1])
	if tokenKey != nil {
		pkt = addPreauth(pkt, tokenKey, at)
	}
	return pkt, nil
}

// checkKnock refuses a request that no server would accept.
func checkKnock(k *Knock) error {
	switch {
	case len(k.Ports) == 0:
		return errors.New("a knock must ask for at least one port")
	case len(k.Ports) > MaxPorts:
		return fmt.Errorf("a knock can ask for at most %d ports", MaxPorts)
	case len(k.Action) > MaxActionLen || !validAction([]byte(k.Action)):
		return fmt.Errorf("action name must be at most %d characters of a-z, 0-9, - and _", MaxActionLen)
	case k.Duration < 0 || k.Duration > (1<<32-1)*time.Second:
		return errors.New("duration out of range")
	case k.Duration%time.Second != 0:
		return errors.New("duration must be whole seconds")
	case !k.UseSource && !grantable(k.Allow):
		return fmt.Errorf("cannot grant address %v", k.Allow)
	case k.Time.IsZero():
		return errors.New("knock has no timestamp")
	case k.To.IsValid() && !grantable(k.To):
		return fmt.Errorf("cannot ask for destination %v", k.To)
	}
	for _, p := range k.Ports {
		if p.Num == 0 {
			return errors.New("port 0 cannot be opened")
		}
	}
	return nil
}

func putHeader(pkt []byte, suite byte) {
	pkt[0], pkt[1], pkt[2], pkt[3] = Version, suite, 0, 0
}

// signedMessage is what the client's signature covers: a context label, the
// header, the HPKE encapsulation and the plaintext before the signature. The
// encapsulation binds the signature to this one encryption, so a signed body
// cannot be lifted into a packet sealed by someone else.
func signedMessage(headerAndEnc, pt []byte) []byte {
	m := make([]byte, 0, len(sigContext)+len(headerAndEnc)+signedLen)
	m = append(m, sigContext...)
	m = append(m, headerAndEnc...)
	return append(m, pt[:signedLen]...)
}
