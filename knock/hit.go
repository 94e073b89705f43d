// Package knock implements port-knock doors: sequences of TCP, UDP and ICMP
// hits that open something when a source completes them in order within a
// time limit. It reads knockd.conf as knockd does and keeps per-(source,
// door) state in a bounded table with timer-driven expiry. It decides when
// a door opens; it never runs commands or touches the firewall itself.
package knock

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/postern/postern/port"
)

// ICMP is the protocol of an ICMP echo-request hit (ICMPv6 over IPv6). The
// "port" of an ICMP hit is the echo payload's length, so a network that lets
// only ping through can still carry a sequence.
const ICMP = port.ICMP

// Hit is one element of a sequence.
type Hit struct {
	Proto port.Protocol
	Num   uint16 // port, or payload length for ICMP
}

func (h Hit) String() string {
	if h.Proto == ICMP {
		return "icmp/" + strconv.Itoa(int(h.Num))
	}
	return port.Spec{Proto: h.Proto, Num: h.Num}.String()
}

// ParseHit reads a postern.toml sequence element: "tcp/7000", "udp/8000" or
// "icmp/64" (an echo request with a 64-byte payload).
func ParseHit(s string) (Hit, error) {
	name, num, ok := strings.Cut(strings.TrimSpace(s), "/")
	if ok && strings.EqualFold(name, "icmp") {
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil || n > 1472 {
			return Hit{}, fmt.Errorf("%q: ICMP payload length must be 0 to 1472", s)
		}
		return Hit{Proto: ICMP, Num: uint16(n)}, nil
	}
	p, err := port.Parse(s)
	if err != nil {
		return Hit{}, err
	}
	if p.Proto != port.TCP && p.Proto != port.UDP {
		return Hit{}, fmt.Errorf("%q: sequences use tcp, udp or icmp", s)
	}
	return Hit{Proto: p.Proto, Num: p.Num}, nil
}

// ParseKnockdSequence reads knockd's syntax: "7000,8000:udp,9000:tcp". A
// missing protocol means TCP. Unlike knockd before 0.8, a port above 65535
// is an error, not wrapped.
func ParseKnockdSequence(s string) ([]Hit, error) {
	var out []Hit
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		num, proto, _ := strings.Cut(f, ":")
		n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q: port must be 1 to 65535", f)
		}
		h := Hit{Proto: port.TCP, Num: uint16(n)}
		switch strings.ToLower(strings.TrimSpace(proto)) {
		case "", "tcp":
		case "udp":
			h.Proto = port.UDP
		default:
			return nil, fmt.Errorf("%q: protocol must be tcp or udp", f)
		}
		out = append(out, h)
	}
	if len(out) > MaxSequence {
		return nil, fmt.Errorf("a sequence has at most %d hits", MaxSequence)
	}
	return out, nil
}

// MaxSequence is knockd's SEQ_MAX.
const MaxSequence = 32

// TCP flag bits, as in the TCP header.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
	URG = 0x20
)

// Flags is knockd's TCPFlags: bits that must be set and bits that must be
// clear. TCP packets that do not match are ignored, not counted as wrong
// hits. The zero value matches every packet.
type Flags struct{ Set, Clear uint8 }

// ParseFlags reads "syn,!ack". Empty means no constraint.
func ParseFlags(s string) (Flags, error) {
	var f Flags
	if strings.TrimSpace(s) == "" {
		return f, nil
	}
	names := map[string]uint8{"fin": FIN, "syn": SYN, "rst": RST, "psh": PSH, "ack": ACK, "urg": URG}
	for _, part := range strings.Split(s, ",") {
		part = strings.ToLower(strings.TrimSpace(part))
		neg := strings.HasPrefix(part, "!")
		bit, ok := names[strings.TrimPrefix(part, "!")]
		if !ok {
			return Flags{}, fmt.Errorf("%q: flags are fin, syn, rst, psh, ack, urg, each optionally with !", part)
		}
		if neg {
			f.Clear |= bit
		} else {
			f.Set |= bit
		}
	}
	if f.Set&f.Clear != 0 {
		return Flags{}, fmt.Errorf("%q: a flag cannot be both required and excluded", s)
	}
	return f, nil
}

// Match reports whether TCP flags satisfy f.
func (f Flags) Match(flags uint8) bool { return flags&f.Set == f.Set && flags&f.Clear == 0 }

func (f Flags) String() string {
	var parts []string
	for _, b := range []struct {
		bit  uint8
		name string
	}{{FIN, "fin"}, {SYN, "syn"}, {RST, "rst"}, {PSH, "psh"}, {ACK, "ack"}, {URG, "urg"}} {
		if f.Set&b.bit != 0 {
			parts = append(parts, b.name)
		}
		if f.Clear&b.bit != 0 {
			parts = append(parts, "!"+b.name)
		}
	}
	return strings.Join(parts, ",")
}
