package covert

import (
	"container/list"
	"net/netip"
	"time"
)

// Reassembler pairs the SYNs of a knock. Its contract:
//   - it keeps, per source address, the last two carriers seen within
//     Window; a knock's SYNs may arrive in either order (the caller tries
//     both), and a SYN of a knock whose other SYN never came is dropped
//     when it is older than Window, or pushed out by the next knock's SYNs;
//   - it tracks at most Max sources; when full, the least recently seen is
//     evicted and counted, so spoofed floods cost bounded memory;
//   - sources never share state.
//
// Not safe for concurrent use.
type Reassembler struct {
	Max    int
	Window time.Duration

	lru       *list.List // of *slot, least recently seen first
	bySrc     map[netip.Addr]*list.Element
	Evictions uint64
}

type slot struct {
	src netip.Addr
	c   [2][CarrierSize]byte
	at  [2]time.Time
	n   int
}

// NewReassembler tracks up to max sources, pairing SYNs within window.
func NewReassembler(max int, window time.Duration) *Reassembler {
	return &Reassembler{Max: max, Window: window, lru: list.New(), bySrc: map[netip.Addr]*list.Element{}}
}

// Len is the number of sources tracked.
func (r *Reassembler) Len() int { return len(r.bySrc) }

// Add records a carrier from src. When src has two carriers within Window
// it returns them, oldest first, for the caller to try in both orders.
func (r *Reassembler) Add(src netip.Addr, c [CarrierSize]byte, now time.Time) (pair [2][CarrierSize]byte, ok bool) {
	el, found := r.bySrc[src]
	if !found {
		if len(r.bySrc) >= r.Max {
			oldest := r.lru.Front()
			delete(r.bySrc, oldest.Value.(*slot).src)
			r.lru.Remove(oldest)
			r.Evictions++
		}
		el = r.lru.PushBack(&slot{src: src})
		r.bySrc[src] = el
	} else {
		r.lru.MoveToBack(el)
	}
	s := el.Value.(*slot)
	// Forget carriers too old to belong to this one's knock.
	if s.n == 2 && now.Sub(s.at[0]) > r.Window {
		s.c[0], s.at[0], s.n = s.c[1], s.at[1], 1
	}
	if s.n == 1 && now.Sub(s.at[0]) > r.Window {
		s.n = 0
	}
	if s.n == 2 { // keep the newest two
		s.c[0], s.at[0], s.n = s.c[1], s.at[1], 1
	}
	s.c[s.n], s.at[s.n] = c, now
	s.n++
	if s.n < 2 {
		return pair, false
	}
	return s.c, true
}

// Done forgets src after its knock verified.
func (r *Reassembler) Done(src netip.Addr) {
	if el, ok := r.bySrc[src]; ok {
		r.lru.Remove(el)
		delete(r.bySrc, src)
	}
}

// Expire forgets sources whose newest carrier is older than Window.
func (r *Reassembler) Expire(now time.Time) {
	for el := r.lru.Front(); el != nil; {
		s := el.Value.(*slot)
		if now.Sub(s.at[s.n-1]) <= r.Window {
			return // the rest were seen more recently
		}
		next := el.Next()
		r.lru.Remove(el)
		delete(r.bySrc, s.src)
		el = next
	}
}
