// Package port names what a grant opens: a transport protocol and a port
// number, written "tcp/22" in configuration, on the command line and in logs.
// It never touches the network.
package port

import (
	"fmt"
	"strconv"
	"strings"
)

// Protocol is an IP protocol number.
type Protocol uint8

// The protocols a grant can name, and ICMP, which knock sequences use (echo
// requests; ICMPv6 on IPv6) but grants never do.
const (
	ICMP Protocol = 1
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

// String returns the protocol's lower-case name.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	case ICMP:
		return "icmp"
	}
	return "proto" + strconv.Itoa(int(p))
}

// ParseProtocol reads "tcp", "udp" or "sctp".
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp, udp or sctp)", s)
}

// Spec is one protocol and port, such as tcp/22.
type Spec struct {
	Proto Protocol
	Num   uint16
}

// String formats the spec as "tcp/22".
func (s Spec) String() string { return s.Proto.String() + "/" + strconv.Itoa(int(s.Num)) }

// Parse reads "tcp/22". The port must be 1–65535.
func Parse(s string) (Spec, error) {
	name, num, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Spec{}, fmt.Errorf("%q: want protocol/port, such as tcp/22", s)
	}
	p, err := ParseProtocol(name)
	if err != nil {
		return Spec{}, fmt.Errorf("%q: %w", s, err)
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return Spec{}, fmt.Errorf("%q: port must be a number from 1 to 65535", s)
	}
	return Spec{Proto: p, Num: uint16(n)}, nil
}

// ParseList reads a comma-separated list such as "tcp/22,udp/53".
func ParseList(s string) ([]Spec, error) {
	var out []Spec
	for _, f := range strings.Split(s, ",") {
		sp, err := Parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, sp)
	}
	return out, nil
}

// Join formats specs as "tcp/22,udp/53".
func Join(specs []Spec) string {
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = s.String()
	}
	return strings.Join(parts, ",")
}
