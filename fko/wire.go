package fko

import (
	"crypto/hmac"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"sync"
	"unsafe"
)

// Keys are what one access.conf stanza or one client invocation knows.
type Keys struct {
	Key      []byte // Rijndael key (KEY or KEY_BASE64); empty with GPG
	Mode     Mode
	HMACKey  []byte // empty: no HMAC (legacy, not recommended)
	HMACType DigestType
	GPG      *GPG // GPG encryption instead of Rijndael, or nil

	// macs pools keyed HMAC states with scratch space: a server tries
	// every stanza's HMAC on every packet, so this is the hot path.
	macs sync.Pool
}

type macState struct {
	h   hash.Hash
	in  []byte
	sum []byte
	enc []byte
}

// macOK reports whether tag is the HMAC of prefix+body, compared as text
// in constant time, without allocating once warm.
func (k *Keys) macOK(prefix, body, tag string) bool {
	st, _ := k.macs.Get().(*macState)
	if st == nil {
		d := k.hmacType()
		st = &macState{h: hmac.New(func() hash.Hash { return d.new() }, k.HMACKey)}
	}
	defer k.macs.Put(st)
	st.h.Reset()
	st.in = append(append(st.in[:0], prefix...), body...)
	st.h.Write(st.in)
	st.sum = st.h.Sum(st.sum[:0])
	st.enc = b64.AppendEncode(st.enc[:0], st.sum)
	return len(tag) == len(st.enc) && subtle.ConstantTimeCompare(st.enc, unsafeBytes(tag)) == 1
}

// unsafeBytes views a string's bytes for reading; the comparison never
// writes them.
func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// MaxRijndaelWire is the longest Rijndael packet fwknopd accepts: it treats
// any packet of 400 characters or more as GnuPG (measured; see the
// reference), so a sender must stay below.
const MaxRijndaelWire = 399

// GPGMinWire is fwknop's MIN_GNUPG_MSG_SIZE.
const GPGMinWire = 400

// gpgB64Prefix is the base64 of GnuPG's old-format PKESK header (0x85),
// which fwknop strips from the wire and adds back.
const gpgB64Prefix = "hQ"

func (k *Keys) hmacType() DigestType {
	if k.HMACType == 0 {
		return SHA256
	}
	return k.HMACType
}

func (k *Keys) mac(text string) string {
	d := k.hmacType()
	m := hmac.New(func() hash.Hash { return d.new() }, k.HMACKey)
	m.Write([]byte(text))
	return b64.EncodeToString(m.Sum(nil))
}

// Seal encrypts pt (an encoded message) and returns the wire text.
func (k *Keys) Seal(pt string) (string, error) {
	var text, prefix string
	if k.GPG != nil {
		t, err := k.GPG.encrypt(pt)
		if err != nil {
			return "", err
		}
		text, prefix = t, gpgB64Prefix
	} else {
		t, err := rijndaelEncrypt(pt, k.Key, k.Mode, nil)
		if err != nil {
			return "", err
		}
		text, prefix = t, rijndaelB64
	}
	if len(text) < len(prefix) || text[:len(prefix)] != prefix {
		return "", fmt.Errorf("fko: encrypted data does not start with %q", prefix)
	}
	wire := text[len(prefix):]
	if len(k.HMACKey) > 0 {
		// The HMAC covers the base64 text with its prefix (encrypt, then
		// MAC the encoding), and is appended without a separator.
		wire += k.mac(text)
	}
	if k.GPG == nil && len(wire) > MaxRijndaelWire {
		return "", fmt.Errorf("fko: the packet would be %d characters; fwknopd takes packets of %d or more for GnuPG and drops them: ask for fewer ports or a shorter command", len(wire), GPGMinWire)
	}
	if k.GPG != nil && len(wire) < GPGMinWire {
		return "", fmt.Errorf("fko: GnuPG packet of %d characters is below fwknop's %d", len(wire), GPGMinWire)
	}
	return wire, nil
}

// Errors from Open, for logs and counters.
var (
	ErrHMAC       = errors.New("HMAC mismatch")
	ErrWrongKind  = errors.New("packet length does not fit the stanza's encryption")
	ErrNotBase64  = errors.New("not base64")
	ErrPrefixed   = errors.New("packet starts with an encryption prefix (replay of a re-prefixed copy)")
	ErrPacketSize = errors.New("packet size out of range")
)

// Preprocess applies fwknopd's checks before any key is tried
// (preprocess_spa_data()): size, no leading prefix, base64 text only.
func Preprocess(wire []byte) error {
	if len(wire) < 140 || len(wire) > 1500 {
		return ErrPacketSize
	}
	s := string(wire)
	if len(s) >= len(rijndaelB64) && s[:len(rijndaelB64)] == rijndaelB64 {
		return ErrPrefixed
	}
	if len(s) > GPGMinWire && s[:2] == gpgB64Prefix {
		return ErrPrefixed
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/') {
			return ErrNotBase64
		}
	}
	return nil
}

// IsGPG reports whether fwknopd would treat a packet as GnuPG: by length
// alone, the tag included.
func IsGPG(wire string) bool { return len(wire) >= GPGMinWire }

// Open checks and decrypts a wire packet with one stanza's keys and decodes
// the message. The HMAC, when the stanza has a key, is checked first, in
// constant time, before any decryption.
func (k *Keys) Open(wire string) (*Message, *GPGSigner, error) {
	if IsGPG(wire) != (k.GPG != nil) {
		return nil, nil, ErrWrongKind
	}
	body := wire
	prefix := rijndaelB64
	if k.GPG != nil {
		prefix = gpgB64Prefix
	}
	if len(k.HMACKey) > 0 {
		n := k.hmacType().encodedLen()
		if len(wire) <= n {
			return nil, nil, ErrHMAC
		}
		body = wire[:len(wire)-n]
		if !k.macOK(prefix, body, wire[len(wire)-n:]) {
			return nil, nil, ErrHMAC
		}
	}
	var pt string
	var signer *GPGSigner
	var err error
	if k.GPG != nil {
		pt, signer, err = k.GPG.decrypt(prefix + body)
	} else {
		pt, err = rijndaelDecrypt(prefix+body, k.Key, k.Mode)
	}
	if err != nil {
		return nil, nil, err
	}
	m, err := Decode(pt)
	return m, signer, err
}
