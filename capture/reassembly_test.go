package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func ipv6UDP(src, dst [16]byte, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 48+len(payload))
	binary.BigEndian.PutUint32(b[0:], 6<<28)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = ProtoUDP, 64
	copy(b[8:], src[:])
	copy(b[24:], dst[:])
	binary.BigEndian.PutUint16(b[40:], sport)
	binary.BigEndian.PutUint16(b[42:], dport)
	binary.BigEndian.PutUint16(b[44:], uint16(8+len(payload)))
	copy(b[48:], payload)
	return b
}

// ipv4Fragments splits an IPv4 packet into fragments carrying at most size
// bytes (a multiple of 8) of its datagram each, as a router would.
func ipv4Fragments(pkt []byte, size int) [][]byte {
	ihl := int(pkt[0]&0x0f) * 4
	data := pkt[ihl:]
	var out [][]byte
	for off := 0; off < len(data); off += size {
		end := min(off+size, len(data))
		f := append(append([]byte(nil), pkt[:ihl]...), data[off:end]...)
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		flags := uint16(off / 8)
		if end < len(data) {
			flags |= 0x2000
		}
		binary.BigEndian.PutUint16(f[6:], flags)
		out = append(out, setHeaderSum(f))
	}
	return out
}

// ipv6Fragments splits an IPv6 packet (no extension headers) likewise.
func ipv6Fragments(pkt []byte, size int) [][]byte {
	data := pkt[40:]
	var out [][]byte
	for off := 0; off < len(data); off += size {
		end := min(off+size, len(data))
		f := append(append([]byte(nil), pkt[:40]...), make([]byte, 8)...)
		f[6] = 44
		f[40] = pkt[6]
		fo := uint16(off)
		if end < len(data) {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[42:], fo)
		binary.BigEndian.PutUint32(f[44:], 0xabcdef01)
		f = append(f, data[off:end]...)
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		out = append(out, f)
	}
	return out
}

func TestReassembly(t *testing.T) {
	payload := bytes.Repeat([]byte("suite 2 knock "), 101)[:1412]
	now := time.Now()
	for _, tt := range []struct {
		name  string
		pkt   []byte
		frags func([]byte, int) [][]byte
	}{
		{"IPv4", ipv4UDP(v4a, v4b, 40000, 62201, payload), ipv4Fragments},
		{"IPv6", ipv6UDP(v6a, v6b, 40000, 62201, payload), ipv6Fragments},
	} {
		t.Run(tt.name, func(t *testing.T) {
			frs := tt.frags(tt.pkt, 1232) // the most a 1280-byte MTU carries
			if len(frs) != 2 {
				t.Fatalf("%d fragments", len(frs))
			}
			for _, order := range [][]int{{0, 1}, {1, 0}} {
				r := NewReassembler()
				var whole []byte
				for _, i := range order {
					var f Frame
					if err := Parse(frs[i], &f); !errors.Is(err, ErrFragment) {
						t.Fatalf("fragment %d parses as %v", i, err)
					}
					whole = r.Add(frs[i], now)
					if len(r.Failures()) > 0 {
						t.Fatalf("failures %v", r.Failures())
					}
				}
				var f Frame
				if err := Parse(whole, &f); err != nil || f.DstPort != 62201 || !bytes.Equal(f.Payload, payload) {
					t.Fatalf("order %v: rebuilt %v %+v", order, err, f)
				}
				if r.Pending() != 0 {
					t.Fatalf("%d pending after completion", r.Pending())
				}
			}

			// The last fragment lost: reported once the time is up.
			r := NewReassembler()
			r.Add(frs[0], now)
			if fs := r.Expire(now.Add(fragmentTimeout)); len(fs) != 1 || fs[0].Err != ErrFragmentTimeout ||
				fs[0].Src.String() != srcOf(tt.pkt).String() {
				t.Fatalf("timeout: %+v", fs)
			}
			// A later fragment alone (never its first): not a knock as far
			// as anyone can tell, dropped quietly.
			r.Add(frs[1], now)
			if fs := r.Expire(now.Add(fragmentTimeout)); len(fs) != 0 {
				t.Fatalf("orphan reported: %+v", fs)
			}
			// Overlap drops the datagram (RFC 5722), reported.
			r.Add(frs[0], now)
			r.Add(frs[0], now)
			if fs := r.Failures(); len(fs) != 1 || fs[0].Err != ErrFragmentOverlap || r.Pending() != 0 {
				t.Fatalf("overlap: %+v, %d pending", fs, r.Pending())
			}
		})
	}
}

func srcOf(pkt []byte) netip.Addr {
	var f Frame
	Parse(pkt, &f)
	return f.Src
}

func TestReassemblyBounds(t *testing.T) {
	now := time.Now()
	r := NewReassembler()
	big := ipv4UDP(v4a, v4b, 1, 62201, make([]byte, 3000))
	for _, f := range ipv4Fragments(big, 1480) {
		if r.Add(f, now) != nil {
			t.Fatal("a datagram over the bound was rebuilt")
		}
	}
	if r.Pending() != 0 {
		t.Fatalf("%d pending after a too-large datagram", r.Pending())
	}
	// One source gets maxPerSource datagrams at once; the next evicts the
	// oldest (and says so).
	pkt := ipv4UDP(v4a, v4b, 1, 62201, make([]byte, 100))
	for i := range maxPerSource + 1 {
		f := ipv4Fragments(pkt, 64)[0]
		binary.BigEndian.PutUint16(f[4:], uint16(i))
		setHeaderSum(f)
		r.Add(f, now)
	}
	if r.Pending() != maxPerSource || len(r.Failures()) != 1 || r.Failures()[0].Err != ErrFragmentLimit {
		t.Fatalf("per source: %d pending, %+v", r.Pending(), r.Failures())
	}
	// Fragments spoofed "from" that source fill its share; its real knock,
	// sent next, is still rebuilt.
	for i := range maxPerSource {
		f := ipv4Fragments(pkt, 64)[0]
		binary.BigEndian.PutUint16(f[4:], uint16(100+i))
		setHeaderSum(f)
		r.Add(f, now)
	}
	real := ipv4UDP(v4a, v4b, 1, 62201, make([]byte, 1000))
	binary.BigEndian.PutUint16(real[4:], 4242)
	setHeaderSum(real)
	var whole []byte
	for _, f := range ipv4Fragments(real, 512) {
		whole = r.Add(f, now)
	}
	if whole == nil {
		t.Fatalf("the source's own datagram after %d spoofed fragments was not rebuilt", maxPerSource)
	}
	// Many sources: the table stays bounded, the oldest go.
	for i := range maxDatagrams + 10 {
		f := ipv4Fragments(pkt, 64)[0]
		f[12], f[13] = 10, byte(i>>8)
		f[14] = byte(i)
		setHeaderSum(f)
		r.Add(f, now)
	}
	if r.Pending() > maxDatagrams {
		t.Fatalf("%d pending, bound %d", r.Pending(), maxDatagrams)
	}
}

// FuzzReassembly feeds fragments of every shape: never a panic, the table
// stays within its bounds, and whatever comes out is one unfragmented IP
// packet of UDP.
func FuzzReassembly(f *testing.F) {
	pkt := ipv4UDP(v4a, v4b, 1, 62201, make([]byte, 300))
	frs := ipv4Fragments(pkt, 128)
	f.Add(frs[0], frs[1], frs[2])
	p6 := ipv6Fragments(ipv6UDP(v6a, v6b, 1, 62201, make([]byte, 300)), 128)
	f.Add(p6[0], p6[1], p6[2])
	f.Add([]byte{0x45}, []byte{}, []byte{0x60})
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		r := NewReassembler()
		now := time.Now()
		for _, pkt := range [][]byte{a, b, c, a} {
			whole := r.Add(pkt, now)
			if whole == nil {
				continue
			}
			// The IP layer is whole and unfragmented; the UDP header is
			// the sender's and may still be malformed (the parser says so).
			var fr Frame
			err := Parse(whole, &fr)
			if err != nil && !errors.Is(err, ErrBadL4) && !errors.Is(err, ErrTruncated) || fr.Proto != ProtoUDP {
				t.Fatalf("rebuilt %x: %v", whole, err)
			}
			if len(whole) > 40+maxL4 {
				t.Fatalf("rebuilt %d bytes", len(whole))
			}
		}
		if r.Pending() > maxDatagrams {
			t.Fatal("unbounded")
		}
		r.Expire(now.Add(time.Hour))
		if r.Pending() != 0 {
			t.Fatal("expiry left datagrams")
		}
	})
}
