package capture

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"
)

// Fragment reassembly. A post-quantum knock (1412 bytes of UDP payload)
// is fragmented on a path whose MTU is 1280; AF_PACKET sees the fragments,
// not the datagram the kernel rebuilds. The reassembler rebuilds UDP
// datagrams in user space, within fixed bounds: at most maxDatagrams at
// once (the oldest is evicted), maxPerSource from one address (its oldest
// is evicted), maxL4 bytes
// each, fragmentTimeout to complete. Overlapping fragments drop their
// datagram (RFC 5722). Every datagram that had its first fragment — the
// one the kernel filter matched to a knock port — and is not completed is
// reported, never silently lost.
const (
	maxDatagrams    = 1024
	maxPerSource    = 8
	maxL4           = snapLen
	fragmentTimeout = 2 * time.Second
)

// Reassembly errors, reported with the datagram's source.
var (
	ErrFragmentTimeout = errors.New("IP fragments not completed in time")
	ErrFragmentOverlap = errors.New("overlapping IP fragments")
	ErrFragmentTooBig  = errors.New("fragmented datagram too large")
	ErrFragmentLimit   = errors.New("too many fragmented datagrams from one source")
	ErrFragmentEvicted = errors.New("fragmented datagram evicted by newer ones")
)

type fragKey struct {
	src, dst netip.Addr
	id       uint32
}

type datagram struct {
	started  time.Time
	header   []byte // the first fragment's IP header (IPv6: the fixed 40 bytes)
	data     [maxL4]byte
	covered  []span // received byte ranges of the L4 datagram
	total    int    // its length, once the last fragment came; else -1
	first    bool   // the fragment at offset 0 came
	proto    uint8
	reported bool
}

type span struct{ lo, hi int }

// Reassembler rebuilds fragmented UDP datagrams. Not safe for concurrent
// use: the capture loop owns it.
type Reassembler struct {
	pending  map[fragKey]*datagram
	perSrc   map[netip.Addr]int
	order    []fragKey // oldest first, for eviction
	whole    []byte    // the last rebuilt packet
	failures []Failure
}

// Failure is a datagram given up: who sent it and why.
type Failure struct {
	Src, Dst netip.Addr
	Err      error
}

// NewReassembler returns an empty reassembler.
func NewReassembler() *Reassembler {
	return &Reassembler{pending: map[fragKey]*datagram{}, perSrc: map[netip.Addr]int{}}
}

// fragment is one parsed fragment.
type fragment struct {
	key    fragKey
	header []byte
	proto  uint8
	off    int
	more   bool
	data   []byte
}

// parseFragment reads the fragment fields of an IPv4 or IPv6 packet; ok is
// false for anything that is not a well-formed UDP fragment.
func parseFragment(b []byte) (fragment, bool) {
	var fr fragment
	if len(b) < 1 {
		return fr, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return fr, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < 20 || total < ihl || total > len(b) || headerSum(b[:ihl]) != 0xffff || b[9] != ProtoUDP {
			return fr, false
		}
		flags := binary.BigEndian.Uint16(b[6:])
		fr.key = fragKey{netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), uint32(binary.BigEndian.Uint16(b[4:]))}
		fr.header, fr.proto = b[:ihl], b[9]
		fr.off, fr.more = int(flags&0x1fff)*8, flags&0x2000 != 0
		fr.data = b[ihl:total]
	case 6:
		if len(b) < 40 {
			return fr, false
		}
		plen := int(binary.BigEndian.Uint16(b[4:]))
		if 40+plen > len(b) {
			return fr, false
		}
		rest, next := b[40:40+plen], b[6]
		for hops := 0; next != 44; hops++ {
			if hops > 8 || (next != 0 && next != 43 && next != 60) || len(rest) < 8 {
				return fr, false
			}
			n := (int(rest[1]) + 1) * 8
			if n > len(rest) {
				return fr, false
			}
			next, rest = rest[0], rest[n:]
		}
		if len(rest) < 8 || rest[0] != ProtoUDP {
			return fr, false
		}
		fo := binary.BigEndian.Uint16(rest[2:])
		fr.key = fragKey{netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40])), binary.BigEndian.Uint32(rest[4:])}
		fr.header, fr.proto = b[:40], rest[0]
		fr.off, fr.more = int(fo&0xfff8), fo&1 != 0
		fr.data = rest[8:]
	default:
		return fr, false
	}
	if fr.more && len(fr.data)%8 != 0 || len(fr.data) == 0 && fr.more {
		return fr, false
	}
	return fr, true
}

// Add takes a fragment. It returns the rebuilt, unfragmented packet when
// this fragment completed one (valid until the next call); nil while
// waiting. Datagrams given up on — by this call or because they timed
// out — are in Failures until the next call. A packet that is not a UDP
// fragment is a failure of its own (ErrFragment).
func (r *Reassembler) Add(b []byte, now time.Time) []byte {
	r.failures = r.failures[:0]
	r.expire(now)
	fr, ok := parseFragment(b)
	if !ok {
		var f Frame
		Parse(b, &f)
		r.failures = append(r.failures, Failure{Src: f.Src, Dst: f.Dst, Err: ErrFragment})
		return nil
	}
	d := r.pending[fr.key]
	if d == nil {
		if r.perSrc[fr.key.src] >= maxPerSource {
			// The source's oldest datagram makes room: packets spoofed
			// "from" a client cannot hold its place and shut out the
			// knock it sends next.
			r.evictOldestOf(fr.key.src)
		}
		if len(r.pending) >= maxDatagrams {
			r.evictOldest()
		}
		d = &datagram{started: now, total: -1}
		r.pending[fr.key] = d
		r.perSrc[fr.key.src]++
		r.order = append(r.order, fr.key)
	}
	end := fr.off + len(fr.data)
	if end > maxL4 {
		r.drop(fr.key, d, ErrFragmentTooBig, true)
		return nil
	}
	for _, s := range d.covered {
		if fr.off < s.hi && s.lo < end {
			r.drop(fr.key, d, ErrFragmentOverlap, true)
			return nil
		}
	}
	if !fr.more {
		if d.total >= 0 || end < maxCovered(d.covered) {
			r.drop(fr.key, d, ErrFragmentOverlap, true)
			return nil
		}
		d.total = end
	} else if d.total >= 0 && end > d.total {
		r.drop(fr.key, d, ErrFragmentOverlap, true)
		return nil
	}
	copy(d.data[fr.off:end], fr.data)
	d.covered = append(d.covered, span{fr.off, end})
	if fr.off == 0 {
		d.first = true
		d.header = append(d.header[:0], fr.header...)
		d.proto = fr.proto
	}
	if !d.first || d.total < 0 || coveredLen(d.covered) != d.total {
		return nil
	}
	r.forget(fr.key)
	return r.rebuild(d)
}

// Failures are the datagrams the last Add gave up on.
func (r *Reassembler) Failures() []Failure { return r.failures }

// Expire gives up on datagrams older than the timeout (for a capture loop
// that has seen no packet for a while); see Failures.
func (r *Reassembler) Expire(now time.Time) []Failure {
	r.failures = r.failures[:0]
	r.expire(now)
	return r.failures
}

// Pending is how many datagrams wait for fragments.
func (r *Reassembler) Pending() int { return len(r.pending) }

func (r *Reassembler) expire(now time.Time) {
	for len(r.order) > 0 {
		k := r.order[0]
		d := r.pending[k]
		if d == nil {
			r.order = r.order[1:]
			continue
		}
		if now.Sub(d.started) < fragmentTimeout {
			return
		}
		r.drop(k, d, ErrFragmentTimeout, d.first)
	}
}

func (r *Reassembler) evictOldest() {
	for len(r.order) > 0 {
		k := r.order[0]
		if d := r.pending[k]; d != nil {
			r.drop(k, d, ErrFragmentEvicted, d.first)
			return
		}
		r.order = r.order[1:]
	}
}

// evictOldestOf gives up the oldest datagram from src.
func (r *Reassembler) evictOldestOf(src netip.Addr) {
	for _, k := range r.order {
		if d := r.pending[k]; d != nil && k.src == src {
			r.drop(k, d, ErrFragmentLimit, d.first)
			return
		}
	}
}

// drop gives a datagram up; it is reported when it is known to be one
// addressed to a knock port (its first fragment came) or when the fragment
// in hand proves it hostile (report).
func (r *Reassembler) drop(k fragKey, d *datagram, err error, report bool) {
	r.forget(k)
	if report && !d.reported {
		d.reported = true
		r.failures = append(r.failures, Failure{k.src, k.dst, err})
	}
}

func (r *Reassembler) forget(k fragKey) {
	if _, ok := r.pending[k]; !ok {
		return
	}
	delete(r.pending, k)
	if r.perSrc[k.src]--; r.perSrc[k.src] <= 0 {
		delete(r.perSrc, k.src)
	}
	// order keeps stale keys; they are skipped (and trimmed) as they reach
	// its head, so it stays within a few times maxDatagrams.
	if len(r.order) > 4*maxDatagrams {
		live := r.order[:0]
		for _, o := range r.order {
			if r.pending[o] != nil {
				live = append(live, o)
			}
		}
		r.order = live
	}
}

// rebuild makes the unfragmented packet: the first fragment's header with
// the lengths set and the fragment fields gone, then the whole datagram.
func (r *Reassembler) rebuild(d *datagram) []byte {
	h := d.header
	if h[0]>>4 == 4 {
		r.whole = append(append(r.whole[:0], h...), d.data[:d.total]...)
		binary.BigEndian.PutUint16(r.whole[2:], uint16(len(h)+d.total))
		r.whole[6], r.whole[7] = 0, 0
		r.whole[10], r.whole[11] = 0, 0
		binary.BigEndian.PutUint16(r.whole[10:], ^headerSum(r.whole[:len(h)]))
		return r.whole
	}
	r.whole = append(append(r.whole[:0], h[:40]...), d.data[:d.total]...)
	binary.BigEndian.PutUint16(r.whole[4:], uint16(d.total))
	r.whole[6] = d.proto
	return r.whole
}

func coveredLen(ss []span) int {
	n := 0
	for _, s := range ss {
		n += s.hi - s.lo
	}
	return n
}

func maxCovered(ss []span) int {
	m := 0
	for _, s := range ss {
		m = max(m, s.hi)
	}
	return m
}
