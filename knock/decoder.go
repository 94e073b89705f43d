package knock

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/command"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/ratelimit"
)

// Refusal reasons and notes of the door language.
const (
	ReasonFailed   = "knock failed"
	ReasonTimedOut = "knock timed out"
	ReasonEvicted  = "knock evicted"
	ReasonRefused  = "knock refused"
	ReasonFlood    = "door rate limited"
	NoteProgress   = "knock progress"
	NoteDuplicate  = "knock duplicate"
)

// Reasons lists the refusal reasons, for metrics.
var Reasons = []string{ReasonFailed, ReasonTimedOut, ReasonEvicted, ReasonRefused, ReasonFlood}

// Completions a door may have: door sequences are not authenticated, so a
// flood of spoofed completions is bounded here, before any grant or
// command (a person completes a door a few times a minute; a script
// checking a door, such as the knockd differential test's sentinel, a
// few times a second). Each source (an IPv6 /64) has a budget of its own,
// so one sender cannot spend the door's; the door's total is well above what spoofing from random
// sources at tens a second reaches (measured: 40 a second refused every
// real knock with a total of 10), and the command runner bounds pending
// stop commands besides.
const (
	completionRate        = 100 // a second, per door
	completionBurst       = 200
	sourceCompletionRate  = 10 // a second, per door and source: what the whole door had before
	sourceCompletionBurst = 20
	completionSources     = 65536
)

// doorLimits are one door's completion budgets.
type doorLimits struct{ total, perSource *ratelimit.Limiter }

func (l doorLimits) allow(src netip.Addr, now time.Time) bool {
	return l.perSource.Allow(src, now) && l.total.Allow(netip.Addr{}, now)
}

// Decoder is the door language in the daemon's pipeline: it feeds hits to
// the Engine and turns its events into verdicts — a completed sequence
// becomes a policy Request for the door's ports and commands, a failure,
// timeout or eviction a refusal, progress a note. Safe for concurrent use:
// the capture and the expiry timer share it.
type Decoder struct {
	mu     sync.Mutex
	engine *Engine
	limits map[*Door]doorLimits // completions per door
	// pending collects the verdicts of the call in progress (under mu):
	// decoded's for Decode, expired's for Expire, reused so that a packet
	// costs no allocation.
	pending, decoded, expired []policy.Verdict
	out                       policy.Verdict
	changed                   bool // a one-time sequence moved on: the door's ports changed
}

// NewDecoder tracks at most maxTracked attempts at doors.
func NewDecoder(doors []*Door, maxTracked int) *Decoder {
	d := &Decoder{limits: map[*Door]doorLimits{}}
	for _, door := range doors {
		d.limits[door] = doorLimits{ratelimit.New(completionRate, completionBurst, 1),
			ratelimit.New(sourceCompletionRate, sourceCompletionBurst, completionSources)}
	}
	d.engine = NewEngine(doors, maxTracked, d.event)
	return d
}

// Decode feeds one captured packet to the engine.
func (d *Decoder) Decode(f *capture.Frame, emit policy.Sink) {
	var hit Hit
	var flags uint8
	switch f.Proto {
	case capture.ProtoTCP:
		hit, flags = Hit{Proto: port.TCP, Num: f.DstPort}, f.TCPFlags
	case capture.ProtoUDP:
		hit = Hit{Proto: port.UDP, Num: f.DstPort}
	case capture.ProtoICMP, capture.ProtoICMPv6:
		if f.ICMPType != 8 && f.ICMPType != 128 { // echo request
			return
		}
		hit = Hit{Proto: ICMP, Num: uint16(min(len(f.Payload), 65535))}
	default:
		return
	}
	d.mu.Lock()
	d.pending = d.decoded[:0]
	d.engine.HitAt(f.Src, f.Dst, hit, flags, f.Time, f.Foreign)
	d.decoded = d.pending
	d.mu.Unlock()
	// The verdicts go out once the lock is released: the sink may block
	// (a netlink flush, the command runner's fsync) and must not hold up
	// the expiry timer. Only the capture goroutine uses d.decoded.
	for i := range d.decoded {
		emit(&d.decoded[i])
	}
}

// Expire drops attempts that timed out, handing emit their refusals (after
// the lock is released; only the expiry timer uses d.expired).
func (d *Decoder) Expire(now time.Time, emit policy.Sink) {
	d.mu.Lock()
	d.pending = d.expired[:0]
	d.engine.Expire(now)
	d.expired = d.pending
	d.mu.Unlock()
	for i := range d.expired {
		emit(&d.expired[i])
	}
}

// Tracked returns how many attempts the engine holds.
func (d *Decoder) Tracked() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.engine.Stats().Tracked
}

// PortsChanged reports, once, that a door's sequence ports changed (a
// one-time sequence was used and the next line took over), so that
// capture and the firewall follow.
func (d *Decoder) PortsChanged() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.changed
	d.changed = false
	return c
}

// event runs with d.mu held; it builds nothing for events it drops.
func (d *Decoder) event(ev Event) {
	v, door := &d.out, ev.Door
	switch ev.Kind {
	case Completed:
		if door.OneTime != nil {
			d.changed = true
		}
		// The last hit is a stage too: knockd logs "Stage N" for it before
		// "OPEN SESAME".
		*v = policy.Verdict{Language: policy.Door, Src: ev.Src, Client: door.Name, Note: NoteProgress}
		v.Add(slog.Int("stage", ev.Stage))
		d.pending = append(d.pending, *v)
		if l, ok := d.limits[door]; ok && !l.allow(ev.Src, time.Now()) {
			v.Refuse(policy.Door, ev.Src, door.Name, ReasonFlood)
			break
		}
		r, err := doorRequest(door, ev.Src)
		if err != nil {
			v.Refuse(policy.Door, ev.Src, door.Name, ReasonRefused, slog.String("detail", err.Error()))
			break
		}
		v.Grant(r)
	case Progress, Duplicate:
		note := NoteProgress
		if ev.Kind == Duplicate {
			note = NoteDuplicate
		}
		*v = policy.Verdict{Language: policy.Door, Src: ev.Src, Client: door.Name, Note: note}
		v.Add(slog.Int("stage", ev.Stage))
	case Failed:
		v.Refuse(policy.Door, ev.Src, door.Name, ReasonFailed, slog.Int("stage", ev.Stage),
			slog.String("got", ev.Got.String()), slog.String("want", ev.Want.String()))
	case TimedOut:
		v.Refuse(policy.Door, ev.Src, door.Name, ReasonTimedOut, slog.Int("stage", ev.Stage),
			slog.Duration("seq_timeout", door.SeqTimeout))
	case Evicted:
		v.Refuse(policy.Door, ev.Src, door.Name, ReasonEvicted, slog.Int("stage", ev.Stage))
	case Refused:
		v.Refuse(policy.Door, ev.Src, door.Name, ReasonRefused, slog.Int("stage", ev.Stage),
			slog.String("detail", ev.Detail))
	default:
		return
	}
	d.pending = append(d.pending, *v)
}

// doorRequest is what a completed sequence asks for: the door's ports for
// the knocker's address, and the door's commands with %IP% filled in.
func doorRequest(door *Door, src netip.Addr) (policy.Request, error) {
	r := policy.Request{Language: policy.Door, Client: door.Name, Src: src, UseSource: true,
		Ports: door.Open, Duration: door.Duration}
	start, stop := door.Commands(src)
	if start == "" && stop == "" {
		return r, nil
	}
	var err error
	if start != "" {
		if start, err = command.Expand(start, src); err != nil {
			return r, err
		}
	}
	if stop != "" {
		if stop, err = command.Expand(stop, src); err != nil {
			return r, err
		}
	}
	r.Commands = []policy.Command{{Start: start, Stop: stop, StopAfter: door.CmdTimeout, Addr: src}}
	return r, nil
}

// PolicyClient is what a door may do, for package policy: open its ports
// for its duration, and run its commands.
func PolicyClient(door *Door) policy.Client {
	start4, stop4 := door.Commands(netip.MustParseAddr("198.18.0.1"))
	start6, stop6 := door.Commands(netip.MustParseAddr("2001:db8::1"))
	return policy.Client{Language: policy.Door, Name: door.Name, Allow: door.Open, MaxDuration: door.Duration,
		DefaultDuration: door.Duration, AllowSource: true, Commands: start4+stop4+start6+stop6 != "", Lifetime: door.Lifetime}
}
