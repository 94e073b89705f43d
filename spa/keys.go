package spa

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Keys travel as base64 text of a one-byte kind tag and 32 key bytes, so that a
// client key pasted where a server key belongs is caught with a clear message
// instead of silently producing knocks the server drops.
const (
	tagServerPrivate = 's'
	tagServerPublic  = 'S'
	tagClientPrivate = 'c'
	tagClientPublic  = 'C'
	keyLen           = 32
)

// ServerPrivateKey is the server's X25519 key.
type ServerPrivateKey struct{ k *ecdh.PrivateKey }

// ServerPublicKey is the public half clients encrypt to.
type ServerPublicKey [keyLen]byte

// ClientPrivateKey is a client's Ed25519 signing key.
type ClientPrivateKey struct{ k ed25519.PrivateKey }

// ClientPublicKey identifies a client to the server.
type ClientPublicKey [keyLen]byte

// GenerateServerKey makes a new server key.
func GenerateServerKey() (ServerPrivateKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	return ServerPrivateKey{k}, err
}

// GenerateClientKey makes a new client key.
func GenerateClientKey() (ClientPrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	return ClientPrivateKey{k}, err
}

// Public returns the server's public key.
func (s ServerPrivateKey) Public() ServerPublicKey {
	var p ServerPublicKey
	copy(p[:], s.k.PublicKey().Bytes())
	return p
}

// Public returns the client's public key.
func (c ClientPrivateKey) Public() ClientPublicKey {
	var p ClientPublicKey
	copy(p[:], c.k.Public().(ed25519.PublicKey))
	return p
}

func (s ServerPrivateKey) String() string { return encodeKey(tagServerPrivate, s.k.Bytes()) }
func (p ServerPublicKey) String() string  { return encodeKey(tagServerPublic, p[:]) }
func (c ClientPrivateKey) String() string { return encodeKey(tagClientPrivate, c.k.Seed()) }
func (p ClientPublicKey) String() string  { return encodeKey(tagClientPublic, p[:]) }

func encodeKey(tag byte, key []byte) string {
	return base64.StdEncoding.EncodeToString(append([]byte{tag}, key...))
}

var kindNames = map[byte]string{
	tagServerPrivate: "a server private key",
	tagServerPublic:  "a server public key",
	tagClientPrivate: "a client private key",
	tagClientPublic:  "a client public key",
}

func decodeKey(s string, want byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(raw) != 1+keyLen || kindNames[raw[0]] == "" {
		return nil, errors.New("not a postern key (want the base64 text printed by postern genkey or postern pubkey)")
	}
	if raw[0] != want {
		return nil, fmt.Errorf("this is %s, not %s", kindNames[raw[0]], kindNames[want])
	}
	return raw[1:], nil
}

// ParseServerPrivateKey reads the text form of a server private key.
func ParseServerPrivateKey(s string) (ServerPrivateKey, error) {
	b, err := decodeKey(s, tagServerPrivate)
	if err != nil {
		return ServerPrivateKey{}, err
	}
	k, err := ecdh.X25519().NewPrivateKey(b)
	return ServerPrivateKey{k}, err
}

// ParseServerPublicKey reads the text form of a server public key.
func ParseServerPublicKey(s string) (ServerPublicKey, error) {
	var p ServerPublicKey
	b, err := decodeKey(s, tagServerPublic)
	copy(p[:], b)
	return p, err
}

// ParseClientPrivateKey reads the text form of a client private key.
func ParseClientPrivateKey(s string) (ClientPrivateKey, error) {
	b, err := decodeKey(s, tagClientPrivate)
	if err != nil {
		return ClientPrivateKey{}, err
	}
	return ClientPrivateKey{ed25519.NewKeyFromSeed(b)}, nil
}

// ParseClientPublicKey reads the text form of a client public key.
func ParseClientPublicKey(s string) (ClientPublicKey, error) {
	var p ClientPublicKey
	b, err := decodeKey(s, tagClientPublic)
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
// others can read: a key others could read is a key that is no longer private.
func ReadPrivateKeyFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s: private key file has mode %04o; it must not be readable by group or others (chmod 600 %s)", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
