package knock

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/port"
)

var (
	t0   = time.Unix(1_800_000_000, 0)
	srv  = netip.MustParseAddr("198.18.0.1")
	srcA = netip.MustParseAddr("198.18.0.2")
	srcB = netip.MustParseAddr("198.18.0.3")
	syn  = uint8(SYN)
)

func tcp(n uint16) Hit { return Hit{Proto: port.TCP, Num: n} }
func udp(n uint16) Hit { return Hit{Proto: port.UDP, Num: n} }

// recorder collects events.
type recorder struct{ events []Event }

func (r *recorder) notify(e Event) { r.events = append(r.events, e) }

func (r *recorder) count(kind EventKind, src netip.Addr) int {
	n := 0
	for _, e := range r.events {
		if e.Kind == kind && e.Src == src {
			n++
		}
	}
	return n
}

func door(seq ...Hit) *Door {
	return &Door{Name: "ssh", Sequence: seq, SeqTimeout: 5 * time.Second, Flags: Flags{Set: SYN, Clear: ACK}}
}

func newEngine(max int, doors ...*Door) (*Engine, *recorder) {
	r := &recorder{}
	return NewEngine(doors, max, r.notify), r
}

// feed sends hits from src one millisecond apart, starting at start.
func feed(e *Engine, src netip.Addr, start time.Time, hits ...Hit) time.Time {
	for _, h := range hits {
		e.Hit(src, srv, h, syn, start)
		start = start.Add(time.Millisecond)
	}
	return start
}

func TestSequenceOpens(t *testing.T) {
	e, r := newEngine(100, door(tcp(7000), udp(8000), tcp(9000)))
	feed(e, srcA, t0, tcp(7000), udp(8000), tcp(9000))
	if r.count(Completed, srcA) != 1 {
		t.Fatalf("events %+v", r.events)
	}
	if e.Stats().Tracked != 0 {
		t.Fatal("completed attempt still tracked")
	}
}

// knockd loses concurrent knockers; postern must not.
func TestInterleavedSourcesBothSucceed(t *testing.T) {
	e, r := newEngine(100, door(tcp(7000), tcp(8000), tcp(9000)))
	now := t0
	for _, h := range []Hit{tcp(7000), tcp(8000), tcp(9000)} {
		e.Hit(srcA, srv, h, syn, now)
		e.Hit(srcB, srv, h, syn, now)
		now = now.Add(time.Millisecond)
	}
	if r.count(Completed, srcA) != 1 || r.count(Completed, srcB) != 1 {
		t.Fatalf("events %+v", r.events)
	}
}

func TestOneSourcesFailureLeavesAnotherAlone(t *testing.T) {
	e, r := newEngine(100, door(tcp(7000), tcp(8000), tcp(9000)))
	feed(e, srcA, t0, tcp(7000), tcp(8000))
	feed(e, srcB, t0, tcp(7000), tcp(9000)) // B fails
	feed(e, srcA, t0.Add(time.Second), tcp(9000))
	if r.count(Failed, srcB) != 1 || r.count(Completed, srcA) != 1 || r.count(Completed, srcB) != 0 {
		t.Fatalf("events %+v", r.events)
	}
}

func TestDuplicateHitsTolerated(t *testing.T) {
	e, r := newEngine(100, door(tcp(7000), tcp(8000), tcp(9000)))
	feed(e, srcA, t0, tcp(7000), tcp(7000), tcp(8000), tcp(8000), tcp(8000), tcp(9000))
	if r.count(Completed, srcA) != 1 || r.count(Failed, srcA) != 0 || r.count(Duplicate, srcA) != 3 {
		t.Fatalf("events %+v", r.events)
	}
}

func TestOutOfOrderFails(t *testing.T) {
	e, r := newEngine(100, door(tcp(7000), tcp(8000), tcp(9000)))
	feed(e, srcA, t0, tcp(7000), tcp(9000), tcp(8000))
	if r.count(Completed, srcA) != 0 || r.count(Failed, srcA) != 1 {
		t.Fatalf("events %+v", r.events)
	}
	var f Event
	for _, ev := range r.events {
		if ev.Kind == Failed {
			f = ev
		}
	}
	if f.Stage != 1 || f.Got != tcp(9000) || f.Want != tcp(8000) {
		t.Fatalf("failure %+v", f)
	}
	// A wrong hit that is the first of the sequence starts a new attempt.
	feed(e, srcA, t0.Add(time.Second), tcp(7000), tcp(7000), tcp(8000), tcp(7000), tcp(8000), tcp(9000))
	if r.count(Completed, srcA) != 1 {
		t.Fatalf("restart after failure: %+v", r.events)
	}
}

func TestOtherPortsAndFlagsIgnored(t *testing.T) {
	e, r := newEngine(100, door(tcp(7000), tcp(8000), tcp(9000)))
	e.Hit(srcA, srv, tcp(7000), syn, t0)
	e.Hit(srcA, srv, tcp(22), syn, t0)       // not this door's port
	e.Hit(srcA, srv, tcp(9000), SYN|ACK, t0) // flags do not match: ignored
	e.Hit(srcA, srv, udp(9000), 0, t0)       // another protocol: not this door's
	e.Hit(srcA, srv, tcp(8000), syn, t0)
	e.Hit(srcA, srv, tcp(9000), syn, t0)
	if r.count(Completed, srcA) != 1 || r.count(Failed, srcA) != 0 {
		t.Fatalf("events %+v", r.events)
	}
}

func TestTimeout(t *testing.T) {
	e, r := newEngine(100, door(tcp(7000), tcp(8000), tcp(9000)))
	feed(e, srcA, t0, tcp(7000), tcp(8000))
	// Lazily, at the next hit…
	feed(e, srcA, t0.Add(6*time.Second), tcp(9000))
	if r.count(TimedOut, srcA) != 1 || r.count(Completed, srcA) != 0 {
		t.Fatalf("events %+v", r.events)
	}
	// …and from the timer.
	feed(e, srcB, t0, tcp(7000))
	e.Expire(t0.Add(4 * time.Second))
	if e.Stats().Tracked != 1 {
		t.Fatal("expired too early")
	}
	e.Expire(t0.Add(6 * time.Second))
	if r.count(TimedOut, srcB) != 1 || e.Stats().Tracked != 0 {
		t.Fatalf("events %+v, tracked %d", r.events, e.Stats().Tracked)
	}
}

func TestTargetAndSingleHit(t *testing.T) {
	d := door(udp(4444))
	d.Flags = Flags{}
	d.Target = netip.MustParseAddr("198.18.0.100")
	e, r := newEngine(100, d)
	e.Hit(srcA, srv, udp(4444), 0, t0)
	if len(r.events) != 0 {
		t.Fatal("hit to another address counted")
	}
	e.Hit(srcA, d.Target, udp(4444), 0, t0)
	if r.count(Completed, srcA) != 1 {
		t.Fatalf("events %+v", r.events)
	}
}

func TestBoundedTable(t *testing.T) {
	e, r := newEngine(1000, door(tcp(7000), tcp(8000), tcp(9000)))
	legit := netip.MustParseAddr("2001:db8::1")
	now := t0
	for i := range 100_000 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
		e.Hit(a, srv, tcp(7000), syn, now)
		switch i {
		case 50_000:
			e.Hit(legit, srv, tcp(7000), syn, now)
		case 50_300:
			e.Hit(legit, srv, tcp(8000), syn, now)
		case 50_600:
			e.Hit(legit, srv, tcp(9000), syn, now)
		}
		now = now.Add(time.Microsecond)
	}
	s := e.Stats()
	if s.Tracked != 1000 || s.Evicted != 100_001-1000-1 || len(e.slab) != 1000 {
		t.Fatalf("stats %+v, slab %d", s, len(e.slab))
	}
	if r.count(Completed, legit) != 1 {
		t.Fatal("legitimate knocker interleaved with the flood did not get in")
	}
}

func TestOneTimeSequences(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	os.WriteFile(path, []byte("# used before\n 7000,8000\n\n 7001,8001:udp\n 7002,8002\n"), 0o600)
	ot, err := LoadOneTime(path)
	if err != nil {
		t.Fatal(err)
	}
	d := &Door{Name: "ot", OneTime: ot, SeqTimeout: 5 * time.Second}
	e, r := newEngine(100, d)
	now := feed(e, srcA, t0, tcp(7000), tcp(8000))
	now = feed(e, srcA, now, tcp(7000), tcp(8000)) // used: no longer the sequence
	now = feed(e, srcB, now, tcp(7001), udp(8001))
	if r.count(Completed, srcA) != 1 || r.count(Completed, srcB) != 1 {
		t.Fatalf("events %+v", r.events)
	}
	data, _ := os.ReadFile(path)
	if string(data) != "# used before\n#7000,8000\n\n#7001,8001:udp\n 7002,8002\n" {
		t.Fatalf("file after two uses:\n%s", data)
	}
	// A restart reads the file as left: the next line is current.
	ot2, err := LoadOneTime(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, seq, ok := ot2.Current(); !ok || seq[0] != tcp(7002) {
		t.Fatalf("after reload: %v", seq)
	}
	feed(e, srcA, now, tcp(7002), tcp(8002))
	if _, _, ok := ot.Current(); ok {
		t.Fatal("exhausted file still has a sequence")
	}
	feed(e, srcA, now, tcp(7002), tcp(8002))
	if r.count(Completed, srcA) != 2 {
		t.Fatalf("events %+v", r.events)
	}
	if err := os.WriteFile(path, []byte(" 7000,99999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOneTime(path); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("bad line: %v", err)
	}
}

func TestRotatingSequences(t *testing.T) {
	rot := &Rotating{Secret: []byte("0123456789abcdef0123456789abcdef"), Period: 30 * time.Second, Length: 4,
		Proto: port.TCP, Lo: 20000, Hi: 29999}
	d := &Door{Name: "rot", Rotating: rot, SeqTimeout: 5 * time.Second}
	e, r := newEngine(100, d)
	now := t0
	w := rot.Window(now)
	seq := func(w int64) []Hit { return rot.Sequence("rot", w) }
	if fmt.Sprint(seq(w)) == fmt.Sprint(seq(w-1)) || fmt.Sprint(seq(w)) != fmt.Sprint(seq(w)) {
		t.Fatal("derivation not a function of the window")
	}
	for _, s := range [][]Hit{seq(w), seq(w - 1)} {
		for i, h := range s {
			if h.Num < 20000 || h.Num > 29999 || (i > 0 && s[i-1] == h) {
				t.Fatalf("bad derived sequence %v", s)
			}
		}
	}
	now = feed(e, srcA, now, seq(w-1)...) // previous window: accepted
	if r.count(Completed, srcA) != 1 {
		t.Fatalf("previous window refused: %+v", r.events)
	}
	now = feed(e, srcA, now, seq(w-1)...) // same derived sequence again: refused
	if r.count(Completed, srcA) != 1 || r.count(Refused, srcA) != 1 {
		t.Fatalf("reuse: %+v", r.events)
	}
	now = feed(e, srcB, now, seq(w-2)...) // two windows ago: nothing
	if r.count(Completed, srcB) != 0 {
		t.Fatal("sequence from two windows ago opened")
	}
	feed(e, srcB, now, seq(w)...)
	if r.count(Completed, srcB) != 1 {
		t.Fatal("current window refused")
	}
	// Window w is accepted until window w+2 begins; only then may its
	// use be forgotten.
	e.Expire(t0.Add(2*rot.Period - time.Second))
	if len(e.used) != 1 {
		t.Fatalf("used windows at the end of window w+1: %d, want 1 (window w)", len(e.used))
	}
	e.Expire(t0.Add(3 * rot.Period))
	if len(e.used) != 0 {
		t.Fatal("used windows never forgotten")
	}
}

func TestParse(t *testing.T) {
	seq, err := ParseKnockdSequence("7000, 8000:udp,9000:TCP")
	if err != nil || fmt.Sprint(seq) != "[tcp/7000 udp/8000 tcp/9000]" {
		t.Fatalf("%v %v", seq, err)
	}
	for _, bad := range []string{"", "70000", "7000:icmp", "0", "a,b"} {
		if _, err := ParseKnockdSequence(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if h, err := ParseHit("icmp/64"); err != nil || h != (Hit{ICMP, 64}) {
		t.Fatalf("%v %v", h, err)
	}
	f, err := ParseFlags("syn,!ack")
	if err != nil || !f.Match(SYN) || f.Match(SYN|ACK) || f.Match(0) || f.String() != "syn,!ack" {
		t.Fatalf("%+v %v", f, err)
	}
	for _, bad := range []string{"syn,!syn", "ece"} {
		if _, err := ParseFlags(bad); err == nil {
			t.Errorf("flags %q accepted", bad)
		}
	}
}

func BenchmarkHit(b *testing.B) {
	for _, tracked := range []int{1, 1_000_000} {
		b.Run(fmt.Sprintf("tracked=%d", tracked), func(b *testing.B) {
			d := door(tcp(7000), tcp(8000), tcp(9000))
			e := NewEngine([]*Door{d}, tracked, func(Event) {})
			now := t0
			addr := func(i int) netip.Addr {
				return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
			}
			for i := range tracked {
				e.Hit(addr(i), srv, tcp(7000), syn, now)
			}
			hits := []Hit{tcp(7000), tcp(8000), tcp(9000)}
			b.ReportAllocs()
			i := tracked
			for b.Loop() {
				// New sources at a full table: every hit inserts and
				// (with a million tracked) evicts the oldest.
				e.Hit(addr(i), srv, hits[i%3], syn, now)
				i++
			}
			b.ReportMetric(float64(e.Stats().Tracked), "tracked")
		})
	}
}

// Doors from a knockd.conf follow knockd: a repeat or another door's port
// discards the attempt without starting a new one, a port of no door is
// not seen, and a knocker in the middle of one door starts no other.
func TestKnockdDoorRules(t *testing.T) {
	knockdDoor := func(name string, seq ...Hit) *Door {
		d := door(seq...)
		d.Name, d.Knockd = name, true
		return d
	}
	cases := []struct {
		name  string
		hits  []Hit
		opens string // the door that opens, "" for none
	}{
		{"in order", []Hit{tcp(7001), tcp(7002), tcp(7003)}, "a"},
		{"repeat", []Hit{tcp(7001), tcp(7001), tcp(7002), tcp(7003)}, ""},
		{"another door's port", []Hit{tcp(7001), tcp(8001), tcp(7002), tcp(7003)}, ""},
		{"a port of no door", []Hit{tcp(7001), tcp(9999), tcp(7002), tcp(7003)}, "a"},
		{"busy at a, b not started", []Hit{tcp(7001), tcp(8001), tcp(8002)}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, r := newEngine(100, knockdDoor("a", tcp(7001), tcp(7002), tcp(7003)), knockdDoor("b", tcp(8001), tcp(8002)))
			feed(e, srcA, t0, c.hits...)
			opened := ""
			for _, ev := range r.events {
				if ev.Kind == Completed {
					opened += ev.Door.Name
				}
			}
			if opened != c.opens {
				t.Fatalf("opened %q, want %q; events %+v", opened, c.opens, r.events)
			}
		})
	}
	// The same hits at postern's own doors: the repeat is a retransmission
	// and another door's port is not this door's business.
	e, r := newEngine(100, door(tcp(7001), tcp(7002), tcp(7003)), door(tcp(8001), tcp(8002)))
	feed(e, srcA, t0, tcp(7001), tcp(7001), tcp(8001), tcp(7002), tcp(7003))
	if r.count(Completed, srcA) != 1 {
		t.Fatalf("postern door: events %+v", r.events)
	}
}

// A packet to another host (a door's Target on a router) counts only at
// that door.
func TestForeignDestinationOnlyForTarget(t *testing.T) {
	other := netip.MustParseAddr("198.18.0.77")
	plain, targeted := door(tcp(7001), tcp(7002)), door(tcp(7001), tcp(7002))
	targeted.Name, targeted.Target = "targeted", other
	e, r := newEngine(100, plain, targeted)
	for i, h := range []Hit{tcp(7001), tcp(7002)} {
		e.HitAt(srcA, other, h, syn, t0.Add(time.Duration(i)*time.Millisecond), true)
	}
	if len(r.events) != 2 || r.events[1].Kind != Completed || r.events[1].Door != targeted {
		t.Fatalf("events %+v", r.events)
	}
}

// Each one-time line opens once: consuming a line that is no longer the
// current one is refused and changes nothing; the next line is current
// and unmarked.
func TestOneTimeConsumeOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "otp")
	os.WriteFile(path, []byte("7000,8000\n7001,8001\n7002,8002\n"), 0o600)
	ot, err := LoadOneTime(path)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := ot.Current()
	if err := ot.Consume(first); err != nil {
		t.Fatal(err)
	}
	if err := ot.Consume(first); err == nil {
		t.Fatal("the same line consumed twice")
	}
	line, seq, ok := ot.Current()
	if !ok || line != first+1 || seq[0].Num != 7001 {
		t.Fatalf("current after the refused consume: line %d %v %v", line, seq, ok)
	}
	data, _ := os.ReadFile(path)
	if string(data) != "#000,8000\n7001,8001\n7002,8002\n" {
		t.Fatalf("file after one use and one refused reuse: %q", data)
	}
	if err := ot.Consume(line + 1); err == nil {
		t.Fatal("a line that is not current yet was consumed")
	}
	if l, _, _ := ot.Current(); l != line {
		t.Fatalf("current moved to %d", l)
	}
}
