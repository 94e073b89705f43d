// Package capture delivers the packets postern looks at as Frames: from an
// AF_PACKET socket with a kernel filter generated from the configuration, or
// from a plain UDP socket. It holds the project's one parser of IP packets,
// hand-written, bounds-checked and fuzzed. It never answers, injects or
// drops traffic: what reaches the host is the firewall's business.
package capture

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"
)

// IP protocol numbers the parser understands.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Frame is one parsed packet. Payload points into the capture buffer and is
// valid only until the handler returns.
type Frame struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16 // TCP and UDP
	TCPFlags         uint8
	TCPSeq           uint32
	TCPWindow        uint16
	TCPOptions       []byte
	IPID             uint16 // IPv4 identification
	FlowLabel        uint32 // IPv6 flow label
	TTL              uint8  // IPv4 TTL or IPv6 hop limit
	ICMPType         uint8
	ICMPCode         uint8
	Payload          []byte
	Time             time.Time
	// Foreign is set by the server for a packet addressed to another host
	// that it reads only for a door's Target (knockd on a router).
	Foreign bool
}

// Parse errors. They are values, not formatted strings, so that dropping a
// malformed packet allocates nothing.
var (
	ErrTruncated   = errors.New("truncated packet")
	ErrBadVersion  = errors.New("not IPv4 or IPv6")
	ErrBadHeader   = errors.New("malformed IP header")
	ErrFragment    = errors.New("IP fragment")
	ErrBadL4       = errors.New("malformed transport header")
	ErrUnsupported = errors.New("unsupported transport protocol")
	ErrChecksum    = errors.New("bad IPv4 header checksum")
)

// Parse reads an IP packet (starting at the IP header) into f. It fills as
// much as it could read before an error, so a caller can log the source of a
// malformed packet.
func Parse(b []byte, f *Frame) error {
	*f = Frame{Time: f.Time}
	if len(b) < 1 {
		return ErrTruncated
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return ErrTruncated
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < 20 || total < ihl || total > len(b) {
			return ErrBadHeader
		}
		f.Src = netip.AddrFrom4([4]byte(b[12:16]))
		// The host drops a packet whose header checksum is wrong; a knock
		// in one must not count either.
		if headerSum(b[:ihl]) != 0xffff {
			return ErrChecksum
		}
		f.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		f.IPID = binary.BigEndian.Uint16(b[4:])
		f.TTL = b[8]
		f.Proto = b[9]
		// Knocks are single packets well under any MTU: fragments are
		// never knocks, and reassembling them would be an attack surface.
		if binary.BigEndian.Uint16(b[6:])&0x3fff != 0 {
			return ErrFragment
		}
		l4 = b[ihl:total]
	case 6:
		if len(b) < 40 {
			return ErrTruncated
		}
		plen := int(binary.BigEndian.Uint16(b[4:]))
		if 40+plen > len(b) {
			return ErrBadHeader
		}
		f.FlowLabel = binary.BigEndian.Uint32(b[0:]) & 0xfffff
		f.Src = netip.AddrFrom16([16]byte(b[8:24]))
		f.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		f.TTL = b[7]
		next := b[6]
		l4 = b[40 : 40+plen]
		// Walk extension headers; a knock has none, but skipping the
		// common ones costs nothing and keeps the parser honest.
		for hops := 0; ; hops++ {
			if hops > 8 {
				return ErrBadHeader
			}
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(l4) < 8 {
					return ErrTruncated
				}
				n := (int(l4[1]) + 1) * 8
				if n > len(l4) {
					return ErrTruncated
				}
				next, l4 = l4[0], l4[n:]
				continue
			case 44:
				return ErrFragment
			}
			break
		}
		f.Proto = next
	default:
		return ErrBadVersion
	}
	return parseL4(l4, f)
}

func parseL4(b []byte, f *Frame) error {
	switch f.Proto {
	case ProtoUDP:
		if len(b) < 8 {
			return ErrTruncated
		}
		n := int(binary.BigEndian.Uint16(b[4:]))
		if n < 8 || n > len(b) {
			return ErrBadL4
		}
		f.SrcPort = binary.BigEndian.Uint16(b[0:])
		f.DstPort = binary.BigEndian.Uint16(b[2:])
		f.Payload = b[8:n]
	case ProtoTCP:
		if len(b) < 20 {
			return ErrTruncated
		}
		off := int(b[12]>>4) * 4
		if off < 20 || off > len(b) {
			return ErrBadL4
		}
		f.SrcPort = binary.BigEndian.Uint16(b[0:])
		f.DstPort = binary.BigEndian.Uint16(b[2:])
		f.TCPSeq = binary.BigEndian.Uint32(b[4:])
		f.TCPFlags = b[13]
		f.TCPWindow = binary.BigEndian.Uint16(b[14:])
		f.TCPOptions = b[20:off]
		f.Payload = b[off:]
	case ProtoICMP, ProtoICMPv6:
		if len(b) < 8 {
			return ErrTruncated
		}
		f.ICMPType, f.ICMPCode = b[0], b[1]
		f.Payload = b[8:]
	default:
		return ErrUnsupported
	}
	return nil
}

// headerSum is the ones'-complement sum of an IPv4 header (0xffff when its
// checksum is right).
func headerSum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
