package spa

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

// Keys travel as base64 text of a one-byte kind tag and 32 key bytes, so that a
// client key pasted where a server key belongs is caught with a clear message
// instead of silently producing knocks the server drops.
const (
	tagServerPrivate = 's'
	tagServerPublic  = 'S'
	tagXWingPrivate  = 'x' // suite 2: a 32-byte X-Wing seed
	tagXWingPublic   = 'X' // suite 2: ML-KEM-768 (1184 bytes) ‖ X25519 (32 bytes)
	tagClientPrivate = 'c'
	tagClientPublic  = 'C'
	keyLen           = 32
	xwingPublicLen   = 1216
)

// ServerPrivateKey is the server's key: X25519 (suite 1) or an X-Wing
// hybrid (suite 2).
type ServerPrivateKey struct {
	suite byte
	k     hpke.PrivateKey
}

// ServerPublicKey is the public half clients encrypt to. It is comparable.
type ServerPublicKey struct {
	suite byte
	b     string
}

// Suite returns the packet suite this key's knocks use.
func (p ServerPublicKey) Suite() byte { return p.suite }

func (p ServerPublicKey) kem() hpke.KEM {
	if p.suite == SuiteXWing {
		return hpke.MLKEM768X25519()
	}
	return hpke.DHKEM(ecdh.X25519())
}

// ClientPrivateKey is a client's Ed25519 signing key.
type ClientPrivateKey struct{ k ed25519.PrivateKey }

// ClientPublicKey identifies a client to the server.
type ClientPublicKey [keyLen]byte

// GenerateServerKey makes a new suite-1 (X25519) server key.
func GenerateServerKey() (ServerPrivateKey, error) {
	k, err := hpke.DHKEM(ecdh.X25519()).GenerateKey()
	return ServerPrivateKey{SuiteX25519, k}, err
}

// GenerateXWingServerKey makes a new suite-2 (post-quantum hybrid) server key.
func GenerateXWingServerKey() (ServerPrivateKey, error) {
	k, err := hpke.MLKEM768X25519().GenerateKey()
	return ServerPrivateKey{SuiteXWing, k}, err
}

// GenerateClientKey makes a new client key.
func GenerateClientKey() (ClientPrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	return ClientPrivateKey{k}, err
}

// Public returns the server's public key.
func (s ServerPrivateKey) Public() ServerPublicKey {
	return ServerPublicKey{s.suite, string(s.k.PublicKey().Bytes())}
}

// Public returns the client's public key.
func (c ClientPrivateKey) Public() ClientPublicKey {
	var p ClientPublicKey
	copy(p[:], c.k.Public().(ed25519.PublicKey))
	return p
}

// Encode returns the key's text form, as written to a key file. Private
// keys print nothing secret through String or %v: only Encode reveals them.
func (s ServerPrivateKey) Encode() string {
	b, _ := s.k.Bytes() // not cleared: for suite 2 it is the key's own seed
	if s.suite == SuiteXWing {
		return encodeKey(tagXWingPrivate, b)
	}
	return encodeKey(tagServerPrivate, b)
}

// String hides the key: it names only its public half.
func (s ServerPrivateKey) String() string { return "server private key for " + s.Public().String() }

// GoString hides the key from %#v too.
func (s ServerPrivateKey) GoString() string { return s.String() }

func (p ServerPublicKey) String() string {
	if p.suite == SuiteXWing {
		return encodeKey(tagXWingPublic, []byte(p.b))
	}
	return encodeKey(tagServerPublic, []byte(p.b))
}

// Encode returns the key's text form, as written to a key file.
func (c ClientPrivateKey) Encode() string {
	seed := c.k.Seed()
	defer clear(seed)
	return encodeKey(tagClientPrivate, seed)
}

// String hides the key: it names only its public half.
func (c ClientPrivateKey) String() string { return "client private key for " + c.Public().String() }

// GoString hides the key from %#v too.
func (c ClientPrivateKey) GoString() string { return c.String() }
func (p ClientPublicKey) String() string    { return encodeKey(tagClientPublic, p[:]) }

func encodeKey(tag byte, key []byte) string {
	raw := append([]byte{tag}, key...)
	defer clear(raw)
	return base64.StdEncoding.EncodeToString(raw)
}

var kindNames = map[byte]string{
	tagServerPrivate: "a server private key",
	tagServerPublic:  "a server public key",
	tagXWingPrivate:  "a server private key (post-quantum suite)",
	tagXWingPublic:   "a server public key (post-quantum suite)",
	tagClientPrivate: "a client private key",
	tagClientPublic:  "a client public key",
}

func decodeKey(s string, want ...byte) (byte, []byte, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	n := len(raw) - 1
	if err != nil || n < 0 || kindNames[raw[0]] == "" || (raw[0] == tagXWingPublic) != (n == xwingPublicLen) || (raw[0] != tagXWingPublic && n != keyLen) {
		return 0, nil, errors.New("not a postern key (want the base64 text printed by postern genkey or postern pubkey)")
	}
	for _, w := range want {
		if raw[0] == w {
			return raw[0], raw[1:], nil
		}
	}
	return 0, nil, fmt.Errorf("this is %s, not %s", kindNames[raw[0]], kindNames[want[0]])
}

// ParseServerPrivateKey reads the text form of a server private key of
// either suite.
func ParseServerPrivateKey(s string) (ServerPrivateKey, error) {
	tag, b, err := decodeKey(s, tagServerPrivate, tagXWingPrivate)
	if err != nil {
		return ServerPrivateKey{}, err
	}
	if tag == tagXWingPrivate {
		k, err := hpke.MLKEM768X25519().NewPrivateKey(b)
		return ServerPrivateKey{SuiteXWing, k}, err
	}
	k, err := hpke.DHKEM(ecdh.X25519()).NewPrivateKey(b)
	return ServerPrivateKey{SuiteX25519, k}, err
}

// ParseServerPublicKey reads the text form of a server public key of
// either suite.
func ParseServerPublicKey(s string) (ServerPublicKey, error) {
	tag, b, err := decodeKey(s, tagServerPublic, tagXWingPublic)
	if err != nil {
		return ServerPublicKey{}, err
	}
	p := ServerPublicKey{SuiteX25519, string(b)}
	if tag == tagXWingPublic {
		p.suite = SuiteXWing
	}
	if _, err := p.kem().NewPublicKey(b); err != nil {
		return ServerPublicKey{}, fmt.Errorf("invalid server public key: %w", err)
	}
	return p, nil
}

// ParseClientPrivateKey reads the text form of a client private key.
func ParseClientPrivateKey(s string) (ClientPrivateKey, error) {
	_, b, err := decodeKey(s, tagClientPrivate)
	if err != nil {
		return ClientPrivateKey{}, err
	}
	defer clear(b) // the seed; the key keeps its own copy
	return ClientPrivateKey{ed25519.NewKeyFromSeed(b)}, nil
}

// ParseClientPublicKey reads the text form of a client public key.
func ParseClientPublicKey(s string) (ClientPublicKey, error) {
	var p ClientPublicKey
	_, b, err := decodeKey(s, tagClientPublic)
	copy(p[:], b)
	return p, err
}

// PublicKeyOf reads any private key's text form and returns its public key's
// text form; it serves `postern pubkey`, which cannot know which kind it gets.
func PublicKeyOf(private string) (string, error) {
	if k, err := ParseServerPrivateKey(private); err == nil {
		return k.Public().String(), nil
	}
	k, err := ParseClientPrivateKey(private)
	if err != nil {
		return "", errors.New("not a postern private key")
	}
	return k.Public().String(), nil
}

// ReadPrivateKeyFile reads a private key file, refusing one that group or
// others may read.
func ReadPrivateKeyFile(path string) (string, error) { return readSecret(path, "private key") }

// ReadSecretFile reads a shared-secret file (covert and rotating doors),
// refusing one that group or others may read.
func ReadSecretFile(path string) (string, error) { return readSecret(path, "secret") }

// readSecret opens first and checks the mode of what it opened, so the
// file checked is the file read (no stat-then-open race).
func readSecret(path, what string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %s file is not a regular file", path, what)
	}
	// Windows has no group and other bits (a writable file reads as 0666);
	// its ACLs decide there.
	if perm := st.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return "", fmt.Errorf("%s: %s file has mode %04o; it must not be readable by group or others (chmod 600 %s)", path, what, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", err
	}
	defer clear(b)
	return string(b), nil
}
