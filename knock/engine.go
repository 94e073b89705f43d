package knock

import (
	"net/netip"
	"time"

	"github.com/postern/postern/port"
)

// EventKind says what happened to a knock attempt.
type EventKind uint8

// Event kinds.
const (
	Progress  EventKind = iota // a hit matched; Stage hits done so far
	Duplicate                  // the hit just matched came again (a retransmission); ignored
	Completed                  // the whole sequence arrived in time: open the door
	Failed                     // a hit of this door's sequence came out of order
	TimedOut                   // the sequence did not complete within SeqTimeout
	Evicted                    // the table was full; the oldest attempt made room
	Refused                    // completed, but must not open (Detail says why)
)

var kindNames = [...]string{"progress", "duplicate", "completed", "failed", "timed out", "evicted", "refused"}

func (k EventKind) String() string { return kindNames[k] }

// Event reports one step of one source's attempt at one door. Events are
// values; building one allocates nothing.
type Event struct {
	Kind    EventKind
	Door    *Door
	Src     netip.Addr
	Stage   int   // hits matched before this event
	Variant int64 // rotating window or one-time line
	Got     Hit   // Failed: the hit that arrived
	Want    Hit   // Failed: the hit that was expected
	Detail  string
}

// Stats are the engine's counters.
type Stats struct {
	Tracked, Completed, Failed, TimedOut, Evicted, Refused uint64
}

// Engine tracks knock attempts. Its contract:
//   - State is per (source, door, variant). One source's hits, failures or
//     timeouts never touch another source's attempt.
//   - A hit equal to the one just matched is a duplicate (retransmission)
//     and changes nothing; a hit of this door's sequence in the wrong place
//     fails only this source's attempt (and may start a new one); hits on
//     ports outside the door's sequence are not this door's business.
//     Doors read from a knockd.conf (Door.Knockd) follow knockd instead:
//     any hit on any door's port (with flags and destination that door
//     accepts) other than the next one discards the attempt, a repeat
//     too, without starting a new one in the same packet; and a source
//     with an attempt in progress at such a door starts no new attempt.
//   - At most MaxTracked attempts are held, in a table allocated as it
//     fills and never beyond; when it is full the oldest attempt is
//     evicted and counted. Memory is therefore bounded whatever the number
//     of (spoofed) sources.
//   - Expire, called from a timer, removes attempts older than their door's
//     SeqTimeout, oldest first, in O(expired).
//
// An Engine is not safe for concurrent use; the server feeds it from its
// one capture goroutine and its expiry timer under one lock.
type Engine struct {
	doors  []*Door
	notify func(Event)
	max    int

	slab  []entry
	free  int32 // head of the free list, -1 when empty
	index map[stateKey]int32
	lists []list             // per door, ordered by start time (= expiry order)
	used  map[stateKey]int64 // rotating: (src, door, window) → unix second it may be forgotten

	stats Stats
	vbuf  []Variant
	vis   []Variant // visible's own buffer: Hit is iterating vbuf
}

type stateKey struct {
	addr    [16]byte
	door    uint16
	variant int64
}

type entry struct {
	key        stateKey
	start      int64 // unix ns of the first hit
	stage      uint8
	door       uint16
	prev, next int32
}

type list struct{ head, tail int32 }

// NewEngine tracks attempts at doors, at most max at a time, and reports
// every event to notify (which must not call back into the engine).
func NewEngine(doors []*Door, max int, notify func(Event)) *Engine {
	e := &Engine{doors: doors, notify: notify, max: max, free: -1,
		index: make(map[stateKey]int32), lists: make([]list, len(doors)), used: make(map[stateKey]int64)}
	for i := range e.lists {
		e.lists[i] = list{-1, -1}
	}
	return e
}

// Stats returns the counters and the number of attempts tracked now.
func (e *Engine) Stats() Stats {
	s := e.stats
	s.Tracked = uint64(len(e.index))
	return s
}

// Hit feeds one packet: a hit h from src addressed to dst, with the TCP
// flags of a TCP packet, seen at now.
func (e *Engine) Hit(src, dst netip.Addr, h Hit, tcpFlags uint8, now time.Time) {
	e.HitAt(src, dst, h, tcpFlags, now, false)
}

// HitAt is Hit for a packet that may be addressed to another host
// (foreign): only doors whose Target is dst count it (knockd's Target on a
// router).
func (e *Engine) HitAt(src, dst netip.Addr, h Hit, tcpFlags uint8, now time.Time, foreign bool) {
	src, dst = src.Unmap(), dst.Unmap()
	p := packet{src: src, dst: dst, h: h, flags: tcpFlags, foreign: foreign, now: now}
	p.busy = e.knockdBusy(&p)
	for i, d := range e.doors {
		if !p.addressed(d) {
			continue
		}
		// knockd: TCP packets whose flags do not match are ignored, not
		// wrong hits.
		if h.Proto == port.TCP && !d.Flags.Match(tcpFlags) {
			continue
		}
		e.vbuf = d.variants(now, e.vbuf[:0])
		for _, v := range e.vbuf {
			e.step(uint16(i), d, v, &p)
		}
	}
}

// packet is one hit as the engine sees it.
type packet struct {
	src, dst netip.Addr
	h        Hit
	flags    uint8
	foreign  bool
	now      time.Time
	busy     bool // the source has a knockd attempt in progress
}

// addressed reports whether the packet went where door d listens: its
// Target, else this host.
func (p *packet) addressed(d *Door) bool {
	if d.Target.IsValid() {
		return d.Target == p.dst
	}
	return !p.foreign
}

// knockdBusy reports whether the source has an attempt in progress at a
// knockd door addressed by the packet: knockd then starts no new attempt.
func (e *Engine) knockdBusy(p *packet) bool {
	for i, d := range e.doors {
		if !d.Knockd || !p.addressed(d) {
			continue
		}
		e.vbuf = d.variants(p.now, e.vbuf[:0])
		for _, v := range e.vbuf {
			idx, ok := e.index[stateKey{addr: p.src.As16(), door: uint16(i), variant: v.ID}]
			if ok && p.now.UnixNano()-e.slab[idx].start <= int64(d.SeqTimeout) {
				return true
			}
		}
	}
	return false
}

// visible reports whether knockd would have captured the packet at all:
// its capture filter holds every door's ports, each with that door's
// flags and destination.
func (e *Engine) visible(p *packet) bool {
	for _, d := range e.doors {
		if !p.addressed(d) || (p.h.Proto == port.TCP && !d.Flags.Match(p.flags)) {
			continue
		}
		e.vis = d.variants(p.now, e.vis[:0])
		for _, v := range e.vis {
			if contains(v.Seq, p.h) {
				return true
			}
		}
	}
	return false
}

func contains(seq []Hit, h Hit) bool {
	for _, x := range seq {
		if x == h {
			return true
		}
	}
	return false
}

func (e *Engine) step(di uint16, d *Door, v Variant, p *packet) {
	if len(v.Seq) == 0 {
		return
	}
	src, h, now := p.src, p.h, p.now
	key := stateKey{addr: src.As16(), door: di, variant: v.ID}
	ev := Event{Door: d, Src: src, Variant: v.ID}
	if idx, ok := e.index[key]; ok {
		en := &e.slab[idx]
		if now.UnixNano()-en.start > int64(d.SeqTimeout) {
			e.stats.TimedOut++
			ev.Kind, ev.Stage = TimedOut, int(en.stage)
			e.remove(idx)
			e.notify(ev)
		} else {
			stage := int(en.stage)
			switch {
			case h == v.Seq[stage]:
				en.stage++
				ev.Stage = stage + 1
				if ev.Stage == len(v.Seq) {
					e.remove(idx)
					e.complete(ev)
					return
				}
				ev.Kind = Progress
				e.notify(ev)
				return
			case d.Knockd:
				if !e.visible(p) {
					return
				}
			case h == v.Seq[stage-1]:
				ev.Kind, ev.Stage = Duplicate, stage
				e.notify(ev)
				return
			case !contains(v.Seq, h):
				return
			}
			e.stats.Failed++
			ev.Kind, ev.Stage, ev.Got, ev.Want = Failed, stage, h, v.Seq[stage]
			e.remove(idx)
			e.notify(ev)
			if d.Knockd {
				return // knockd starts no attempt with the packet that failed one
			}
			ev.Got, ev.Want = Hit{}, Hit{}
		}
	}
	if h != v.Seq[0] || (d.Knockd && p.busy) {
		return
	}
	ev.Stage = 1
	if len(v.Seq) == 1 {
		e.complete(ev)
		return
	}
	e.insert(key, di, now)
	ev.Kind = Progress
	e.notify(ev)
}

// complete applies the door's once-only rules before reporting success.
func (e *Engine) complete(ev Event) {
	d := ev.Door
	switch {
	case d.Rotating != nil:
		key := stateKey{addr: ev.Src.As16(), door: e.doorIndex(d), variant: ev.Variant}
		if _, seen := e.used[key]; seen {
			e.stats.Refused++
			ev.Kind, ev.Detail = Refused, "rotating sequence already used by this source"
			e.notify(ev)
			return
		}
		// The window stays acceptable until the end of the next one.
		e.used[key] = (ev.Variant + 2) * int64(d.Rotating.Period/time.Second)
	case d.OneTime != nil:
		if err := d.OneTime.Consume(ev.Variant); err != nil {
			// Fail closed: a sequence that cannot be marked used
			// must not open, or it could open again.
			e.stats.Refused++
			ev.Kind, ev.Detail = Refused, "one-time sequence not consumed: "+err.Error()
			e.notify(ev)
			return
		}
	}
	e.stats.Completed++
	ev.Kind = Completed
	e.notify(ev)
}

func (e *Engine) doorIndex(d *Door) uint16 {
	for i, x := range e.doors {
		if x == d {
			return uint16(i)
		}
	}
	return 0
}

func (e *Engine) insert(key stateKey, di uint16, now time.Time) {
	if len(e.index) >= e.max {
		e.evictOldest()
	}
	var idx int32
	if e.free >= 0 {
		idx = e.free
		e.free = e.slab[idx].next
	} else {
		e.slab = append(e.slab, entry{})
		idx = int32(len(e.slab) - 1)
	}
	l := &e.lists[di]
	e.slab[idx] = entry{key: key, start: now.UnixNano(), stage: 1, door: di, prev: l.tail, next: -1}
	if l.tail >= 0 {
		e.slab[l.tail].next = idx
	} else {
		l.head = idx
	}
	l.tail = idx
	e.index[key] = idx
}

func (e *Engine) remove(idx int32) {
	en := &e.slab[idx]
	l := &e.lists[en.door]
	if en.prev >= 0 {
		e.slab[en.prev].next = en.next
	} else {
		l.head = en.next
	}
	if en.next >= 0 {
		e.slab[en.next].prev = en.prev
	} else {
		l.tail = en.prev
	}
	delete(e.index, en.key)
	*en = entry{next: e.free}
	e.free = idx
}

// evictOldest drops the attempt that started first, across all doors.
func (e *Engine) evictOldest() {
	oldest := int32(-1)
	for _, l := range e.lists {
		if l.head >= 0 && (oldest < 0 || e.slab[l.head].start < e.slab[oldest].start) {
			oldest = l.head
		}
	}
	if oldest < 0 {
		return
	}
	en := e.slab[oldest]
	e.stats.Evicted++
	e.remove(oldest)
	var a netip.Addr = netip.AddrFrom16(en.key.addr).Unmap()
	e.notify(Event{Kind: Evicted, Door: e.doors[en.door], Src: a, Stage: int(en.stage), Variant: en.key.variant})
}

// Expire removes every attempt older than its door's timeout and forgets
// used rotating windows that can no longer be accepted.
func (e *Engine) Expire(now time.Time) {
	ns := now.UnixNano()
	for di := range e.lists {
		d := e.doors[di]
		for l := &e.lists[di]; l.head >= 0; {
			en := e.slab[l.head]
			if ns-en.start <= int64(d.SeqTimeout) {
				break
			}
			e.stats.TimedOut++
			e.remove(l.head)
			e.notify(Event{Kind: TimedOut, Door: d, Src: netip.AddrFrom16(en.key.addr).Unmap(), Stage: int(en.stage), Variant: en.key.variant})
		}
	}
	for k, until := range e.used {
		if now.Unix() >= until {
			delete(e.used, k)
		}
	}
}
