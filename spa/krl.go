package spa

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/ssh"
)

// SSHRevocations is what sshd's RevokedKeys names, from a text file (keys,
// SHA256: fingerprints, "serial N") or an OpenSSH binary KRL (ssh-keygen
// -k; PROTOCOL.krl): keys, and certificates by serial or key ID, each for
// one CA or for any. A revoked CA key revokes every certificate it signed.
// The zero value revokes nothing. Read-only after it is built.
type SSHRevocations struct {
	keys    map[string]bool   // by SHA256 fingerprint ("SHA256:…")
	sha1    map[[20]byte]bool // KRL SHA1 fingerprint sections: SHA1 of the key blob
	serials []serialRange
	keyIDs  map[caKeyID]bool
}

// serialRange revokes certificates of ca (its wire form; "" any CA) with
// lo ≤ serial ≤ hi.
type serialRange struct {
	ca     string
	lo, hi uint64
}

type caKeyID struct{ ca, id string }

// RevokeKey revokes a key (and, for a CA key, what it signed) by its
// SHA256 fingerprint.
func (r *SSHRevocations) RevokeKey(fingerprint string) {
	if r.keys == nil {
		r.keys = map[string]bool{}
	}
	r.keys[fingerprint] = true
}

// RevokeSerial revokes certificates of any CA with serial n.
func (r *SSHRevocations) RevokeSerial(n uint64) {
	r.serials = append(r.serials, serialRange{lo: n, hi: n})
}

// KeyRevoked reports whether the plain key k is revoked.
func (r *SSHRevocations) KeyRevoked(k ssh.PublicKey) bool {
	if r == nil {
		return false
	}
	if r.keys[ssh.FingerprintSHA256(k)] {
		return true
	}
	return len(r.sha1) > 0 && r.sha1[sha1.Sum(k.Marshal())]
}

// CertRevoked reports whether cert is revoked: its key, its signing CA's
// key, its serial or its key ID for that CA (or any).
func (r *SSHRevocations) CertRevoked(cert *ssh.Certificate) bool {
	if r == nil {
		return false
	}
	if r.KeyRevoked(cert.Key) || r.KeyRevoked(cert.SignatureKey) {
		return true
	}
	ca := string(cert.SignatureKey.Marshal())
	for _, s := range r.serials {
		if (s.ca == "" || s.ca == ca) && s.lo <= cert.Serial && cert.Serial <= s.hi {
			return true
		}
	}
	return r.keyIDs[caKeyID{ca, cert.KeyId}] || r.keyIDs[caKeyID{"", cert.KeyId}]
}

// IsKRL reports whether data is an OpenSSH binary KRL.
func IsKRL(data []byte) bool { return bytes.HasPrefix(data, []byte(krlMagic)) }

const krlMagic = "SSHKRL\n\x00"

// KRL section types (PROTOCOL.krl).
const (
	krlCertificates   = 1
	krlExplicitKey    = 2
	krlFingerprintSHA = 3
	krlSignature      = 4
	krlSHA256         = 5
	krlExtension      = 255

	krlCertSerialList   = 0x20
	krlCertSerialRange  = 0x21
	krlCertSerialBitmap = 0x22
	krlCertKeyID        = 0x23
	krlCertExtension    = 0x39
)

// krlReader reads SSH wire types, failing once for good.
type krlReader struct {
	b   []byte
	err error
}

func (k *krlReader) fail(format string, args ...any) {
	if k.err == nil {
		k.err = fmt.Errorf(format, args...)
	}
}

// take returns the next n bytes, or nil (and the reader fails) if fewer
// are left.
func (k *krlReader) take(n int) []byte {
	if len(k.b) < n {
		k.fail("truncated")
		return nil
	}
	v := k.b[:n]
	k.b = k.b[n:]
	return v
}

func (k *krlReader) u8() byte {
	if b := k.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (k *krlReader) u32() uint32 {
	if b := k.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (k *krlReader) u64() uint64 {
	if b := k.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (k *krlReader) str() []byte {
	n := k.u32()
	if k.err != nil || uint64(n) > uint64(len(k.b)) {
		k.fail("truncated string")
		return nil
	}
	v := k.b[:n]
	k.b = k.b[n:]
	return v
}

// ParseKRL reads an OpenSSH binary KRL into r. A critical extension it
// does not know, or a signature section (OpenSSH 9.4 and later refuse
// those too), is an error: a revocation list half understood would
// revoke less than it says.
func (r *SSHRevocations) ParseKRL(data []byte) error {
	k := &krlReader{b: data}
	if !IsKRL(data) {
		return errors.New("not an OpenSSH KRL")
	}
	k.b = k.b[len(krlMagic):]
	if v := k.u32(); k.err == nil && v != 1 {
		return fmt.Errorf("KRL format version %d (want 1)", v)
	}
	k.u64() // krl_version
	k.u64() // generated_date
	k.u64() // flags
	k.str() // reserved
	k.str() // comment
	for k.err == nil && len(k.b) > 0 {
		typ := k.u8()
		body := k.str()
		if k.err != nil {
			break
		}
		s := &krlReader{b: body}
		switch typ {
		case krlCertificates:
			r.krlCerts(s)
		case krlExplicitKey:
			for s.err == nil && len(s.b) > 0 {
				blob := s.str()
				key, err := ssh.ParsePublicKey(blob)
				if err != nil {
					s.fail("explicit key: %v", err)
					break
				}
				r.RevokeKey(ssh.FingerprintSHA256(key))
			}
		case krlFingerprintSHA:
			for s.err == nil && len(s.b) > 0 {
				h := s.str()
				if len(h) != sha1.Size {
					s.fail("SHA1 fingerprint of %d bytes", len(h))
					break
				}
				if r.sha1 == nil {
					r.sha1 = map[[20]byte]bool{}
				}
				r.sha1[[20]byte(h)] = true
			}
		case krlSHA256:
			for s.err == nil && len(s.b) > 0 {
				h := s.str()
				if len(h) != sha256.Size {
					s.fail("SHA256 fingerprint of %d bytes", len(h))
					break
				}
				r.RevokeKey("SHA256:" + base64.RawStdEncoding.EncodeToString(h)) // FingerprintSHA256's form
			}
		case krlExtension:
			krlExtensionOK(s, "")
		case krlSignature:
			return errors.New("the KRL is signed: OpenSSH refuses signed KRLs, and so does postern")
		default:
			return fmt.Errorf("unknown KRL section type %d", typ)
		}
		if s.err != nil {
			return fmt.Errorf("KRL section %d: %w", typ, s.err)
		}
	}
	return k.err
}

// krlCerts reads a certificates section.
func (r *SSHRevocations) krlCerts(s *krlReader) {
	caBlob := s.str()
	s.str() // reserved
	ca := ""
	if len(caBlob) > 0 {
		key, err := ssh.ParsePublicKey(caBlob)
		if err != nil {
			s.fail("CA key: %v", err)
			return
		}
		ca = string(key.Marshal())
	}
	for s.err == nil && len(s.b) > 0 {
		typ := s.u8()
		body := s.str()
		c := &krlReader{b: body}
		switch typ {
		case krlCertSerialList:
			for c.err == nil && len(c.b) > 0 {
				n := c.u64()
				r.serials = append(r.serials, serialRange{ca, n, n})
			}
		case krlCertSerialRange:
			lo, hi := c.u64(), c.u64()
			if lo > hi {
				c.fail("serial range %d-%d", lo, hi)
			}
			r.serials = append(r.serials, serialRange{ca, lo, hi})
		case krlCertSerialBitmap:
			offset := c.u64()
			bits := new(big.Int).SetBytes(c.str()) // an mpint: big-endian, a leading zero for the sign
			for i := range bits.BitLen() {
				if bits.Bit(i) == 1 {
					n := offset + uint64(i)
					r.serials = append(r.serials, serialRange{ca, n, n})
				}
			}
		case krlCertKeyID:
			for c.err == nil && len(c.b) > 0 {
				if r.keyIDs == nil {
					r.keyIDs = map[caKeyID]bool{}
				}
				r.keyIDs[caKeyID{ca, string(c.str())}] = true
			}
		case krlCertExtension:
			krlExtensionOK(c, "certificate ")
		default:
			c.fail("unknown certificate section type %#x", typ)
		}
		if c.err != nil {
			s.fail("%v", c.err)
		}
	}
}

// krlExtensionOK reads an extension; only non-critical ones (the Bloom
// filters) may be skipped.
func krlExtensionOK(s *krlReader, what string) {
	name := s.str()
	critical := s.u8()
	s.str()
	if s.err == nil && critical != 0 {
		s.fail("critical %sextension %q is not understood", what, name)
	}
}
