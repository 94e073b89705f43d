package covert

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/postern/postern/capture"
)

// Shape is what makes a SYN look like this host's own connect() SYNs: the
// values Linux puts in every SYN it sends. Only the carrier fields differ.
type Shape struct {
	MSS    uint16
	Window uint16
	WScale uint8 // 0xff: no window-scale option
	SACK   bool
	TTL    uint8
}

// HostShape reads the shape of this host's SYNs to dst from the network
// namespace's sysctls and the route's MTU, as the kernel would compute it.
func HostShape(dst netip.Addr) (Shape, error) {
	s := Shape{WScale: 0xff, TTL: 64}
	if sysctl("net/ipv4/tcp_timestamps", 1) == 0 {
		return s, errors.New("covert: net.ipv4.tcp_timestamps is off: this host's SYNs carry no timestamp to hide a knock in")
	}
	s.SACK = sysctl("net/ipv4/tcp_sack", 1) != 0
	if sysctl("net/ipv4/tcp_window_scaling", 1) != 0 {
		// The smallest shift that lets the window reach tcp_rmem's max.
		max := 6291456
		if f := strings.Fields(readProc("net/ipv4/tcp_rmem")); len(f) == 3 {
			max, _ = strconv.Atoi(f[2])
		}
		s.WScale = 0
		for s.WScale < 14 && 65535<<s.WScale < max {
			s.WScale++
		}
	}
	hdr := 40
	if dst.Is4() {
		s.TTL = uint8(sysctl("net/ipv4/ip_default_ttl", 64))
	} else {
		hdr = 60
		s.TTL = uint8(sysctl("net/ipv6/conf/default/hop_limit", 64))
	}
	mtu, err := routeMTU(dst)
	if err != nil {
		return s, err
	}
	s.MSS = uint16(mtu - hdr)
	// Linux's initial receive window: as many whole segments as fit in
	// 64 KiB (64240 for an MSS of 1460).
	s.Window = uint16(65535 / int(s.MSS) * int(s.MSS))
	return s, nil
}

func readProc(name string) string {
	b, _ := os.ReadFile("/proc/sys/" + name)
	return strings.TrimSpace(string(b))
}

func sysctl(name string, def int) int {
	if n, err := strconv.Atoi(readProc(name)); err == nil {
		return n
	}
	return def
}

// LocalAddr returns this host's address on the route to dst.
func LocalAddr(dst netip.Addr) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

func routeMTU(dst netip.Addr) (int, error) {
	local, err := LocalAddr(dst)
	if err != nil {
		return 0, err
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return 0, err
	}
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == local {
				return ifi.MTU, nil
			}
		}
	}
	return 1500, nil
}

const tcpHeaderLen = 40 // 20 bytes of header, 20 of options

// SYN is one covert SYN to build.
type SYN struct {
	Src, Dst       netip.Addr
	SrcPort        uint16
	DstPort        uint16
	Carrier        [CarrierSize]byte
	FlowLabelHigh4 uint8 // IPv6: the flow label's 4 bits that carry nothing
}

// Build returns the IP packet (header included) for s with shape sh.
func (s SYN) Build(sh Shape) []byte {
	var ip []byte
	if s.Dst.Is4() {
		ip = make([]byte, 20+tcpHeaderLen)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
		copy(ip[4:6], s.Carrier[8:10])             // IP ID
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF, as Linux sets on TCP
		ip[8], ip[9] = sh.TTL, 6
		a, b := s.Src.As4(), s.Dst.As4()
		copy(ip[12:], a[:])
		copy(ip[16:], b[:])
		binary.BigEndian.PutUint16(ip[10:], ^onesSum(0, ip[:20]))
	} else {
		ip = make([]byte, 40+tcpHeaderLen)
		fl := uint32(s.FlowLabelHigh4&0x0f)<<16 | uint32(binary.BigEndian.Uint16(s.Carrier[8:10]))
		binary.BigEndian.PutUint32(ip[0:], 6<<28|fl)
		binary.BigEndian.PutUint16(ip[4:], tcpHeaderLen)
		ip[6], ip[7] = 6, sh.TTL
		a, b := s.Src.As16(), s.Dst.As16()
		copy(ip[8:], a[:])
		copy(ip[24:], b[:])
	}
	t := ip[len(ip)-tcpHeaderLen:]
	binary.BigEndian.PutUint16(t[0:], s.SrcPort)
	binary.BigEndian.PutUint16(t[2:], s.DstPort)
	copy(t[4:8], s.Carrier[0:4]) // sequence number
	t[12], t[13] = tcpHeaderLen/4<<4, 0x02
	binary.BigEndian.PutUint16(t[14:], sh.Window)
	// Options in Linux's order: MSS, SACK permitted, timestamps, NOP,
	// window scale (without SACK, two NOPs stand in its place).
	o := t[20:]
	o[0], o[1] = 2, 4
	binary.BigEndian.PutUint16(o[2:], sh.MSS)
	if sh.SACK {
		o[4], o[5] = 4, 2
	} else {
		o[4], o[5] = 1, 1
	}
	o[6], o[7] = 8, 10
	copy(o[8:12], s.Carrier[4:8]) // TSval; TSecr stays 0
	if sh.WScale != 0xff {
		o[16], o[17], o[18], o[19] = 1, 3, 3, sh.WScale
	} else {
		o[16], o[17], o[18], o[19] = 1, 1, 1, 1
	}
	binary.BigEndian.PutUint16(t[16:], ^tcpSum(s.Src, s.Dst, t))
	return ip
}

// Checksum folds b into the one's-complement sum started with sum, as IP
// and TCP checksums are computed (complement the result to store it).
func Checksum(sum uint32, b []byte) uint16 { return onesSum(sum, b) }

func onesSum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

func tcpSum(src, dst netip.Addr, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		add(a[:])
		add(b[:])
	} else {
		a, b := src.As16(), dst.As16()
		add(a[:])
		add(b[:])
	}
	sum += 6 + uint32(len(seg))
	return onesSum(sum, seg)
}

// TSval returns the timestamp value of TCP options, if there is one.
func TSval(opts []byte) (uint32, bool) {
	for i := 0; i < len(opts); {
		switch kind := opts[i]; kind {
		case 0:
			return 0, false
		case 1:
			i++
			continue
		default:
			if i+1 >= len(opts) {
				return 0, false
			}
			n := int(opts[i+1])
			if n < 2 || i+n > len(opts) {
				return 0, false
			}
			if kind == 8 && n == 10 {
				return binary.BigEndian.Uint32(opts[i+2:]), true
			}
			i += n
		}
	}
	return 0, false
}

// CarrierOf reads the carrier fields of a captured SYN. ok is false for
// anything that is not a plain SYN with a timestamp option.
func CarrierOf(f *capture.Frame) (c [CarrierSize]byte, ok bool) {
	if f.Proto != capture.ProtoTCP || f.TCPFlags&0x3f != 0x02 {
		return c, false
	}
	ts, ok := TSval(f.TCPOptions)
	if !ok {
		return c, false
	}
	binary.BigEndian.PutUint32(c[0:], f.TCPSeq)
	binary.BigEndian.PutUint32(c[4:], ts)
	id := f.IPID
	if f.Src.Is6() && !f.Src.Is4In6() {
		id = uint16(f.FlowLabel)
	}
	binary.BigEndian.PutUint16(c[8:], id)
	return c, true
}
