package spa

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hpke"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/sha256"
	"crypto/sha3"
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/chacha20poly1305"
)

// A test-only HPKE base-mode sender for suite 1 (RFC 9180: DHKEM(X25519,
// HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) with a chosen ephemeral
// key: Go's crypto/hpke draws its own, so a vector made with it cannot be
// reproduced. The vectors test decrypts what this makes with crypto/hpke,
// so the two agree, and an implementer can check theirs byte for byte.

var (
	kemSuiteID  = []byte{'K', 'E', 'M', 0x00, 0x20}
	hpkeSuiteID = []byte{'H', 'P', 'K', 'E', 0x00, 0x20, 0x00, 0x01, 0x00, 0x03}
)

func labeledExtract(suite, salt []byte, label string, ikm []byte) []byte {
	in := append(append(append([]byte("HPKE-v1"), suite...), label...), ikm...)
	prk, err := hkdf.Extract(sha256.New, in, salt)
	if err != nil {
		panic(err)
	}
	return prk
}

func labeledExpand(suite, prk []byte, label string, info []byte, n int) []byte {
	in := binary.BigEndian.AppendUint16(nil, uint16(n))
	in = append(append(append(append(in, "HPKE-v1"...), suite...), label...), info...)
	out, err := hkdf.Expand(sha256.New, prk, string(in), n)
	if err != nil {
		panic(err)
	}
	return out
}

type fixedSealer struct {
	key, nonce []byte
	used       bool
}

func (f *fixedSealer) Seal(aad, pt []byte) ([]byte, error) {
	if f.used {
		return nil, errors.New("one seal per knock")
	}
	f.used = true
	a, err := chacha20poly1305.New(f.key)
	if err != nil {
		return nil, err
	}
	return a.Seal(nil, f.nonce, pt, aad), nil // sequence 0: the base nonce itself
}

// keySchedule is RFC 9180's base-mode key schedule for suite (HKDF-SHA256,
// ChaCha20-Poly1305, the KEM id in suite) from the KEM's shared secret.
func keySchedule(suite, shared []byte) sealer {
	ksc := []byte{0x00} // mode_base
	ksc = append(ksc, labeledExtract(suite, nil, "psk_id_hash", nil)...)
	ksc = append(ksc, labeledExtract(suite, nil, "info_hash", hpkeInfo)...)
	secret := labeledExtract(suite, shared, "secret", nil)
	return &fixedSealer{key: labeledExpand(suite, secret, "key", ksc, 32), nonce: labeledExpand(suite, secret, "base_nonce", ksc, 12)}
}

// encapWith returns an encapFunc whose ephemeral X25519 key is eph
// (suite 1).
func encapWith(eph *ecdh.PrivateKey) encapFunc {
	return func(pk hpke.PublicKey) ([]byte, sealer, error) {
		pkR, err := ecdh.X25519().NewPublicKey(pk.Bytes())
		if err != nil {
			return nil, nil, err
		}
		dh, err := eph.ECDH(pkR)
		if err != nil {
			return nil, nil, err
		}
		enc := eph.PublicKey().Bytes()
		kemContext := append(append([]byte(nil), enc...), pkR.Bytes()...)
		shared := labeledExpand(kemSuiteID, labeledExtract(kemSuiteID, nil, "eae_prk", dh), "shared_secret", kemContext, 32)
		return enc, keySchedule(hpkeSuiteID, shared), nil
	}
}

// xwingSuiteID is suite 2's: KEM 0x647A (MLKEM768-X25519), HKDF-SHA256,
// ChaCha20-Poly1305.
var xwingSuiteID = []byte{'H', 'P', 'K', 'E', 0x64, 0x7a, 0x00, 0x01, 0x00, 0x03}

// encapXWingWith returns an encapFunc for suite 2 whose ML-KEM-768
// encapsulation randomness is m (FIPS 203 Encaps_internal) and whose
// ephemeral X25519 key is eph, as docs/PROTOCOL.md §2 describes X-Wing.
func encapXWingWith(eph *ecdh.PrivateKey, m []byte) encapFunc {
	return func(pk hpke.PublicKey) ([]byte, sealer, error) {
		b := pk.Bytes()
		if len(b) != mlkem.EncapsulationKeySize768+32 {
			return nil, nil, errors.New("not an X-Wing public key")
		}
		ek, err := mlkem.NewEncapsulationKey768(b[:mlkem.EncapsulationKeySize768])
		if err != nil {
			return nil, nil, err
		}
		pkX, err := ecdh.X25519().NewPublicKey(b[mlkem.EncapsulationKeySize768:])
		if err != nil {
			return nil, nil, err
		}
		ssM, ctM, err := mlkemtest.Encapsulate768(ek, m)
		if err != nil {
			return nil, nil, err
		}
		ssX, err := eph.ECDH(pkX)
		if err != nil {
			return nil, nil, err
		}
		ctX := eph.PublicKey().Bytes()
		h := sha3.New256()
		for _, part := range [][]byte{ssM, ssX, ctX, pkX.Bytes(), {0x5c, 0x2e, 0x2f, 0x2f, 0x5e, 0x5c}} { // the label, ASCII backslash . / / ^ backslash
			h.Write(part)
		}
		return append(append([]byte(nil), ctM...), ctX...), keySchedule(xwingSuiteID, h.Sum(nil)), nil
	}
}
