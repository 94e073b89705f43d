package capture

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/postern/postern/port"
)

// Hand-built packets, so the parser is checked against bytes rather than
// against another parser.
func ipv4UDP(src, dst [4]byte, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], 0x1234)
	b[8], b[9] = 64, ProtoUDP
	copy(b[12:], src[:])
	copy(b[16:], dst[:])
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload)))
	copy(b[28:], payload)
	return setHeaderSum(b)
}

// setHeaderSum writes an IPv4 header's checksum.
func setHeaderSum(b []byte) []byte {
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:], ^headerSum(b[:int(b[0]&0x0f)*4]))
	return b
}

func ipv6TCP(src, dst [16]byte, sport, dport uint16, flags byte, payload []byte) []byte {
	b := make([]byte, 40+24+len(payload))
	binary.BigEndian.PutUint32(b[0:], 6<<28|0xabcde)
	binary.BigEndian.PutUint16(b[4:], uint16(24+len(payload)))
	b[6], b[7] = ProtoTCP, 63
	copy(b[8:], src[:])
	copy(b[24:], dst[:])
	t := b[40:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], 0xdeadbeef)
	t[12] = 6 << 4 // 24-byte header: 4 bytes of options
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 64240)
	t[20], t[21], t[22], t[23] = 2, 4, 0x05, 0xb4 // MSS 1460
	copy(t[24:], payload)
	return b
}

var (
	v4a = [4]byte{198, 18, 0, 2}
	v4b = [4]byte{198, 18, 0, 1}
	v6a = netip.MustParseAddr("2001:db8::2").As16()
	v6b = netip.MustParseAddr("2001:db8::1").As16()
)

func TestParse(t *testing.T) {
	var f Frame
	if err := Parse(ipv4UDP(v4a, v4b, 40000, 62201, []byte("knock")), &f); err != nil {
		t.Fatal(err)
	}
	if f.Src != netip.AddrFrom4(v4a) || f.Dst != netip.AddrFrom4(v4b) || f.Proto != ProtoUDP ||
		f.SrcPort != 40000 || f.DstPort != 62201 || string(f.Payload) != "knock" || f.IPID != 0x1234 || f.TTL != 64 {
		t.Fatalf("IPv4 UDP: %+v", f)
	}
	if err := Parse(ipv6TCP(v6a, v6b, 50000, 22, 0x02, nil), &f); err != nil {
		t.Fatal(err)
	}
	if f.Src != netip.AddrFrom16(v6a) || f.Proto != ProtoTCP || f.DstPort != 22 || f.TCPFlags != 0x02 ||
		f.TCPSeq != 0xdeadbeef || f.TCPWindow != 64240 || len(f.TCPOptions) != 4 || f.FlowLabel != 0xabcde {
		t.Fatalf("IPv6 TCP: %+v", f)
	}
}

func TestParseRejects(t *testing.T) {
	good := ipv4UDP(v4a, v4b, 1, 2, []byte("x"))
	frag := append([]byte(nil), good...)
	frag[6] = 0x20 // more fragments
	setHeaderSum(frag)
	badSum := append([]byte(nil), good...)
	badSum[10] ^= 0x01
	badIHL := append([]byte(nil), good...)
	badIHL[0] = 0x44
	longTotal := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(longTotal[2:], 200)
	udpLen := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(udpLen[24:], 100)
	v6frag := ipv6TCP(v6a, v6b, 1, 2, 0, nil)
	v6frag[6] = 44
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"bad empty", nil, ErrTruncated},
		{"bad version", []byte{0x50, 0, 0, 0}, ErrBadVersion},
		{"bad short v4", good[:19], ErrTruncated},
		{"bad ihl", badIHL, ErrBadHeader},
		{"bad total length", longTotal, ErrBadHeader},
		{"bad fragment", frag, ErrFragment},
		{"bad header checksum", badSum, ErrChecksum},
		{"bad udp length", udpLen, ErrBadL4},
		{"bad v6 fragment", v6frag, ErrFragment},
		{"bad v6 short", ipv6TCP(v6a, v6b, 1, 2, 0, nil)[:50], ErrBadHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Frame
			if err := Parse(tt.b, &f); err != tt.want {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	b := ipv4UDP(v4a, v4b, 1, 2, []byte("x"))
	bad := b[:10]
	var f Frame
	if n := testing.AllocsPerRun(100, func() { Parse(b, &f); Parse(bad, &f) }); n != 0 {
		t.Fatalf("Parse allocates %v times", n)
	}
}

// TestFilter runs the generated BPF programs in x/net/bpf's interpreter;
// afpacket_test.go runs them in the kernel.
func TestFilter(t *testing.T) {
	ports := []port.Spec{{Proto: port.UDP, Num: 62201}, {Proto: port.TCP, Num: 7000}, {Proto: port.UDP, Num: 8000}}
	run := func(fam Family, pkt []byte) bool {
		prog, err := Filter(fam, append(PortMatches(ports), Match{Proto: port.TCP, Lo: 20000, Hi: 29999}, Match{Proto: ICMP}))
		if err != nil {
			t.Fatal(err)
		}
		vm, err := bpf.NewVM(prog)
		if err != nil {
			t.Fatal(err)
		}
		n, err := vm.Run(pkt)
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
	frag := ipv4UDP(v4a, v4b, 1, 62201, nil)
	binary.BigEndian.PutUint16(frag[6:], 10) // fragment offset 80
	tcpFrag := append([]byte(nil), frag...)
	tcpFrag[9] = ProtoTCP
	setHeaderSum(tcpFrag)
	v6UDPFrag := ipv6Fragments(ipv6UDP(v6a, v6b, 1, 9, make([]byte, 100)), 64)[1]
	v6TCPFrag := append([]byte(nil), v6UDPFrag...)
	v6TCPFrag[40] = ProtoTCP
	withOpts := ipv4UDP(v4a, v4b, 1, 62201, nil)
	withOpts = append(withOpts[:20:20], append([]byte{1, 1, 1, 0}, withOpts[20:]...)...)
	withOpts[0] = 0x46
	tests := []struct {
		name string
		fam  Family
		pkt  []byte
		want bool
	}{
		{"v4 spa port", IPv4, ipv4UDP(v4a, v4b, 1, 62201, nil), true},
		{"v4 second udp port", IPv4, ipv4UDP(v4a, v4b, 1, 8000, nil), true},
		{"v4 with IP options", IPv4, withOpts, true},
		{"v4 other port", IPv4, ipv4UDP(v4a, v4b, 1, 62202, nil), false},
		{"v4 tcp port number on udp", IPv4, ipv4UDP(v4a, v4b, 1, 7000, nil), false},
		{"v4 later UDP fragment (to the reassembler)", IPv4, frag, true},
		{"v4 later TCP fragment", IPv4, tcpFrag, false},
		{"v6 UDP fragment (to the reassembler)", IPv6, v6UDPFrag, true},
		{"v6 TCP fragment", IPv6, v6TCPFrag, false},
		{"v6 tcp knock port", IPv6, ipv6TCP(v6a, v6b, 1, 7000, 2, nil), true},
		{"v6 tcp other port", IPv6, ipv6TCP(v6a, v6b, 1, 22, 2, nil), false},
		{"v4 tcp range low end", IPv4, retcp4(20000), true},
		{"v4 tcp range high end", IPv4, retcp4(29999), true},
		{"v4 tcp below range", IPv4, retcp4(19999), false},
		{"v4 tcp above range", IPv4, retcp4(30000), false},
		{"v6 tcp in range", IPv6, ipv6TCP(v6a, v6b, 1, 25000, 2, nil), true},
		{"v4 icmp echo request", IPv4, icmp4(8), true},
		{"v4 icmp echo reply", IPv4, icmp4(0), false},
		{"v6 icmp echo request", IPv6, icmp6(128), true},
		{"v6 icmp neighbour solicitation", IPv6, icmp6(135), false},
	}
	for _, tt := range tests {
		if got := run(tt.fam, tt.pkt); got != tt.want {
			t.Errorf("%s: accepted = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// retcp4 is an IPv4 TCP SYN to port p.
func retcp4(p uint16) []byte {
	b := ipv4UDP(v4a, v4b, 1, p, make([]byte, 12))
	b[9] = ProtoTCP
	b[20+12] = 5 << 4
	return b
}

func icmp4(typ byte) []byte {
	b := ipv4UDP(v4a, v4b, 0, 0, make([]byte, 56))
	b[9] = ProtoICMP
	b[20] = typ
	return b
}

func icmp6(typ byte) []byte {
	b := ipv6TCP(v6a, v6b, 0, 0, 0, nil)
	b[6] = ProtoICMPv6
	b[40] = typ
	return b
}

func TestFilterTooManyPorts(t *testing.T) {
	var ports []port.Spec
	for i := range 300 {
		ports = append(ports, port.Spec{Proto: port.UDP, Num: uint16(1000 + i)})
	}
	if _, err := Filter(IPv4, PortMatches(ports)); err == nil {
		t.Fatal("oversized filter accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(ipv4UDP(v4a, v4b, 40000, 62201, []byte("knock")))
	f.Add(ipv6TCP(v6a, v6b, 50000, 22, 0x02, []byte("x")))
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 0, 64})
	f.Fuzz(func(t *testing.T, b []byte) {
		var fr Frame
		if Parse(b, &fr) != nil {
			return
		}
		// Whatever parses must point inside the input.
		if len(fr.Payload) > len(b) || len(fr.TCPOptions) > len(b) {
			t.Fatalf("payload of %d bytes from %d bytes of input", len(fr.Payload), len(b))
		}
		if !fr.Src.IsValid() || !fr.Dst.IsValid() {
			t.Fatal("parsed frame without addresses")
		}
	})
}

// BenchmarkParse is the capture parser's cost per packet: an IPv4 UDP
// knock and an IPv6 TCP SYN.
func BenchmarkParse(b *testing.B) {
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"ipv4-udp", ipv4UDP([4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 1}, 40000, 62201, make([]byte, 324))},
		{"ipv6-tcp-syn", ipv6TCP([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2}, [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}, 40000, 7000, 0x02, nil)},
	} {
		b.Run(c.name, func(b *testing.B) {
			var f Frame
			for b.Loop() {
				if err := Parse(c.pkt, &f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
