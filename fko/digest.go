// Package fko speaks fwknop's FKO 3.0.0 single-packet-authorization format:
// encoding and decoding SPA messages, Rijndael (AES-256-CBC with OpenSSL's
// salted key derivation) and GnuPG encryption, the HMAC over the encoded
// packet, and fwknop's access.conf and .fwknoprc files. The layout follows
// ../shared/reference/fwknop.md; the real fwknop 2.6.10 programs are the
// judge (cmd/postern's fwknop tests run against them). It never touches the
// network or the firewall.
package fko

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"hash"
	"strings"
)

// DigestType is a hash fwknop uses for the inner digest and for the HMAC.
type DigestType int

// Digest types, numbered as fwknop numbers them.
const (
	MD5 DigestType = iota + 1
	SHA1
	SHA256
	SHA384
	SHA512
	SHA3_256
	SHA3_512
)

var digestNames = map[DigestType]string{MD5: "MD5", SHA1: "SHA1", SHA256: "SHA256", SHA384: "SHA384",
	SHA512: "SHA512", SHA3_256: "SHA3_256", SHA3_512: "SHA3_512"}

func (d DigestType) String() string { return digestNames[d] }

// ParseDigestType reads fwknop's names: md5, sha1, sha256, sha384, sha512,
// sha3_256, sha3_512 (any case; "sha3-256" too).
func ParseDigestType(s string) (DigestType, error) {
	n := strings.ReplaceAll(strings.ToUpper(strings.TrimSpace(s)), "-", "_")
	for d, name := range digestNames {
		if n == name {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown digest type %q (md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512)", s)
}

func (d DigestType) new() hash.Hash {
	switch d {
	case MD5:
		return md5.New()
	case SHA1:
		return sha1.New()
	case SHA256:
		return sha256.New()
	case SHA384:
		return sha512.New384()
	case SHA512:
		return sha512.New()
	case SHA3_256:
		return sha3.New256()
	case SHA3_512:
		return sha3.New512()
	}
	panic("fko: unknown digest type")
}

var digestSizes = map[DigestType]int{MD5: 16, SHA1: 20, SHA256: 32, SHA384: 48, SHA512: 64, SHA3_256: 32, SHA3_512: 64}

// encodedLen is the length of the digest in unpadded base64.
func (d DigestType) encodedLen() int { return b64.EncodedLen(digestSizes[d]) }

// b64 is fwknop's base64: the standard alphabet, written without '='.
var b64 = base64.StdEncoding.WithPadding(base64.NoPadding)

// b64Decode decodes fwknop base64, which stops at the first '=' and needs no
// padding.
func b64Decode(s string) ([]byte, error) {
	if i := strings.IndexByte(s, '='); i >= 0 {
		s = s[:i]
	}
	// Strict: the unused low bits of the last character must be zero, so
	// one ciphertext has one text (fwknop's encoder writes them so).
	return b64.Strict().DecodeString(s)
}

func sum(d DigestType, data string) string {
	h := d.new()
	h.Write([]byte(data))
	return b64.EncodeToString(h.Sum(nil))
}

// digestTypesForLen lists the inner digest types a digest of n base64
// characters can be: the packet does not say, the length does (SHA-2 first,
// then SHA-3, as fwknop tries them).
func digestTypesForLen(n int) []DigestType {
	switch n {
	case 22:
		return []DigestType{MD5}
	case 27:
		return []DigestType{SHA1}
	case 43:
		return []DigestType{SHA256, SHA3_256}
	case 64:
		return []DigestType{SHA384}
	case 86:
		return []DigestType{SHA512, SHA3_512}
	}
	return nil
}
