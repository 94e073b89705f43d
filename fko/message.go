package fko

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strconv"
	"strings"

	"github.com/postern/postern/port"
)

// MessageType is FKO's message type field.
type MessageType int

// Message types (lib/fko.h).
const (
	CommandMsg                     MessageType = 0
	AccessMsg                      MessageType = 1
	NATAccessMsg                   MessageType = 2
	ClientTimeoutAccessMsg         MessageType = 3
	ClientTimeoutNATAccessMsg      MessageType = 4
	LocalNATAccessMsg              MessageType = 5
	ClientTimeoutLocalNATAccessMsg MessageType = 6
)

// HasNAT reports whether the type carries a NAT field.
func (t MessageType) HasNAT() bool {
	return t == NATAccessMsg || t == ClientTimeoutNATAccessMsg || t == LocalNATAccessMsg || t == ClientTimeoutLocalNATAccessMsg
}

// HasTimeout reports whether the type carries a client timeout.
func (t MessageType) HasTimeout() bool {
	return t == ClientTimeoutAccessMsg || t == ClientTimeoutNATAccessMsg || t == ClientTimeoutLocalNATAccessMsg
}

// Version is the protocol version fwknop 2.6.10 sends.
const Version = "3.0.0"

// Message is a decoded SPA message.
type Message struct {
	Rand          string // 16 decimal digits
	User          string
	Timestamp     int64
	Version       string
	Type          MessageType
	Message       string // "IP,proto/port[,…]" or "IP,command"
	NAT           string // "host,port" for NAT types
	ServerAuth    string
	ClientTimeout int
	Digest        DigestType
}

// Access is a parsed access message.
type Access struct {
	Allow netip.Addr // 0.0.0.0 means "the packet's source"
	Ports []port.Spec
}

// Field limits of fwknop's decoder (lib/fko_limits.h), in encoded characters.
const (
	maxUserB64    = 64
	maxMessageB64 = 256
	maxTimestamp  = 12
	maxVersion    = 8
	maxTimeout    = 65536
)

var (
	errFormat = errors.New("malformed SPA message")
	errDigest = errors.New("SPA message digest mismatch")
)

// NewRand returns 16 random decimal digits, as fwknop's random value.
func NewRand() (string, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1e16))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%016d", n), nil
}

// Encode returns the plaintext fwknop encrypts: the colon-separated fields
// followed by ':' and the inner digest over them.
func (m *Message) Encode() (string, error) {
	if len(m.Rand) != 16 || !allDigits(m.Rand) {
		return "", errors.New("fko: random value must be 16 digits")
	}
	if m.Type < CommandMsg || m.Type > ClientTimeoutLocalNATAccessMsg {
		return "", fmt.Errorf("fko: message type %d", m.Type)
	}
	if err := validUser(m.User); err != nil {
		return "", err
	}
	if len(m.Message) == 0 || len(m.Message) >= 256 {
		return "", errors.New("fko: message must be 1 to 255 characters")
	}
	if m.Type.HasNAT() != (m.NAT != "") {
		return "", errors.New("fko: NAT field and message type disagree")
	}
	if m.Type.HasTimeout() && (m.ClientTimeout <= 0 || m.ClientTimeout > maxTimeout) {
		return "", errors.New("fko: client timeout out of range")
	}
	version := m.Version
	if version == "" {
		version = Version
	}
	f := []string{m.Rand, b64.EncodeToString([]byte(m.User)), strconv.FormatInt(m.Timestamp, 10), version,
		strconv.Itoa(int(m.Type)), b64.EncodeToString([]byte(m.Message))}
	if m.Type.HasNAT() {
		f = append(f, b64.EncodeToString([]byte(m.NAT)))
	}
	if m.ServerAuth != "" {
		f = append(f, b64.EncodeToString([]byte(m.ServerAuth)))
	}
	if m.Type.HasTimeout() {
		f = append(f, strconv.Itoa(m.ClientTimeout))
	}
	enc := strings.Join(f, ":")
	d := m.Digest
	if d == 0 {
		d = SHA256
	}
	return enc + ":" + sum(d, enc), nil
}

// Decode parses a decrypted plaintext and checks its inner digest, as
// lib/fko_decode.c does, with the bounds of every field checked.
//
// Long on purpose: lib/fko_decode.c's fields in its order, each with its bounds.
func Decode(pt string) (*Message, error) {
	if len(pt) < 36 || len(pt) >= 1500 {
		return nil, errFormat
	}
	for i := 0; i < len(pt); i++ {
		if pt[i] < 0x20 || pt[i] > 0x7e {
			return nil, errFormat
		}
	}
	cut := strings.LastIndexByte(pt, ':')
	if cut < 0 || strings.Count(pt, ":") < 6 {
		return nil, errFormat
	}
	enc, digest := pt[:cut], pt[cut+1:]
	m := &Message{}
	for _, d := range digestTypesForLen(len(digest)) {
		if subtle.ConstantTimeCompare([]byte(sum(d, enc)), []byte(digest)) == 1 {
			m.Digest = d
			break
		}
	}
	if m.Digest == 0 {
		return nil, errDigest
	}
	f := strings.Split(enc, ":")
	if len(f) < 6 || len(f[0]) != 16 || !allDigits(f[0]) {
		return nil, errFormat
	}
	m.Rand = f[0]
	user, err := b64Field(f[1], maxUserB64)
	if err != nil {
		return nil, err
	}
	// fwknopd's rule on the way in too: a username is printable and has
	// none of the characters logs and commands could misread.
	if err := validUser(user); err != nil {
		return nil, err
	}
	m.User = user
	if len(f[2]) == 0 || len(f[2]) > maxTimestamp || !allDigits(f[2]) {
		return nil, errFormat
	}
	m.Timestamp, _ = strconv.ParseInt(f[2], 10, 64)
	if len(f[3]) == 0 || len(f[3]) > maxVersion {
		return nil, errFormat
	}
	m.Version = f[3]
	t, err := strconv.Atoi(f[4])
	if err != nil || len(f[4]) > 2 || t < 0 || t > 6 {
		return nil, errFormat
	}
	m.Type = MessageType(t)
	if m.Message, err = b64Field(f[5], maxMessageB64); err != nil || m.Message == "" {
		return nil, errFormat
	}
	rest := f[6:]
	if m.Type.HasNAT() {
		if len(rest) == 0 {
			return nil, errFormat
		}
		if m.NAT, err = b64Field(rest[0], maxMessageB64); err != nil || m.NAT == "" {
			return nil, errFormat
		}
		rest = rest[1:]
	}
	if m.Type.HasTimeout() {
		if len(rest) == 0 {
			return nil, errFormat
		}
		to := rest[len(rest)-1]
		n, err := strconv.Atoi(to)
		if err != nil || !allDigits(to) || n > maxTimeout {
			return nil, errFormat
		}
		m.ClientTimeout = n
		rest = rest[:len(rest)-1]
	}
	switch len(rest) {
	case 0:
	case 1: // server auth: parsed, never set by the client, ignored by fwknopd
		if m.ServerAuth, err = b64Field(rest[0], maxMessageB64); err != nil {
			return nil, errFormat
		}
	default:
		return nil, errFormat
	}
	return m, nil
}

func b64Field(s string, max int) (string, error) {
	if len(s) > max {
		return "", errFormat
	}
	b, err := b64Decode(s)
	if err != nil {
		return "", errFormat
	}
	return string(b), nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// validUser applies fwknop's username rule (validate_username()).
func validUser(u string) error {
	if u == "" || len(u) > 63 {
		return errors.New("fko: username must be 1 to 63 characters")
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c < 0x21 || c > 0x7e || strings.IndexByte(`"/\[]:;|=,+*?<>`, c) >= 0 {
			return fmt.Errorf("fko: username %q has a character fwknop forbids", u)
		}
	}
	return nil
}

// ParseAccessMessage reads an access message "IP,proto/port[,proto/port…]". The
// IP is IPv4 only in FKO 3.0.0.
func ParseAccessMessage(msg string) (Access, error) {
	ip, list, ok := strings.Cut(msg, ",")
	a, err := netip.ParseAddr(ip)
	if !ok || err != nil || !a.Is4() {
		return Access{}, fmt.Errorf("access message %q: want IPv4,proto/port[,…]", msg)
	}
	var out Access
	out.Allow = a
	for _, item := range strings.Split(list, ",") {
		sp, err := port.Parse(item)
		if err != nil || (sp.Proto != port.TCP && sp.Proto != port.UDP) {
			return Access{}, fmt.Errorf("access message %q: %q is not tcp/PORT or udp/PORT", msg, item)
		}
		out.Ports = append(out.Ports, sp)
	}
	return out, nil
}

// ParseCommandMessage reads a command message "IP,command".
func ParseCommandMessage(msg string) (netip.Addr, string, error) {
	ip, cmd, ok := strings.Cut(msg, ",")
	a, err := netip.ParseAddr(ip)
	if !ok || err != nil || !a.Is4() || cmd == "" {
		return netip.Addr{}, "", fmt.Errorf("command message: want IPv4,command")
	}
	return a, cmd, nil
}
