package server

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"postern/capture"
	"postern/config"
	"postern/firewall"
	"postern/knock"
	"postern/port"
)

// PendingCommandsFile is where stop commands wait, inside state_dir.
const PendingCommandsFile = "pending-commands.json"

// Door metric names.
const (
	mDoorOpened     = "door opened"
	mKnockFailed    = "knock failed"
	mKnockTimedOut  = "knock timed out"
	mKnockEvicted   = "knock evicted"
	mKnockRefused   = "knock refused"
	mCommandBlocked = "command not run"
)

var doorMetricNames = []string{mDoorOpened, mKnockFailed, mKnockTimedOut, mKnockEvicted, mKnockRefused, mCommandBlocked}

// expireEvery is how often the state table drops timed-out attempts.
const expireEvery = 250 * time.Millisecond

// doorHandler feeds knock sequences to the engine and opens doors.
type doorHandler struct {
	s      *Server
	engine *knock.Engine // guarded by s.mu
	native map[*knock.Door]bool
}

func newDoorHandler(s *Server) (*doorHandler, error) {
	cfg := s.cfg
	h := &doorHandler{s: s, native: nativeDoors(cfg)}
	h.engine = knock.NewEngine(cfg.Doors, cfg.MaxTracked, h.event)
	return h, nil
}

// nativeDoors tells [[door]]s (true) from knockd_file doors (false).
func nativeDoors(cfg *config.Config) map[*knock.Door]bool {
	var fromKnockd []*knock.Door
	if cfg.Knockd != nil {
		fromKnockd = cfg.Knockd.Doors
	}
	native := make(map[*knock.Door]bool, len(cfg.Doors))
	for _, d := range cfg.Doors {
		native[d] = !slices.Contains(fromKnockd, d)
	}
	return native
}

// Example knockers, to ask a door which commands it would run.
var (
	ipv4Example = netip.MustParseAddr("198.18.0.1")
	ipv6Example = netip.MustParseAddr("2001:db8::1")
)

// doorPorts returns what capture must pass, which ports postern closes (the
// sequences of [[door]]s; knockd_file doors are only listened to, as
// knockd does) and the closed ranges of rotating doors.
func doorPorts(cfg *config.Config) (matches []capture.Match, closed []port.Spec, ranges []firewall.PortRange) {
	native := nativeDoors(cfg)
	for _, d := range cfg.Doors {
		if r := d.Rotating; r != nil {
			matches = append(matches, capture.Match{Proto: r.Proto, Lo: r.Lo, Hi: r.Hi})
			if native[d] {
				ranges = append(ranges, firewall.PortRange{Proto: r.Proto, Lo: r.Lo, Hi: r.Hi})
			}
			continue
		}
		for _, hit := range d.Hits() {
			m := capture.Match{Proto: hit.Proto, Lo: hit.Num, Hi: hit.Num}
			if hit.Proto == knock.ICMP {
				m = capture.Match{Proto: capture.ICMP}
			}
			if !slices.Contains(matches, m) {
				matches = append(matches, m)
			}
			sp := port.Spec{Proto: hit.Proto, Num: hit.Num}
			if native[d] && hit.Proto != knock.ICMP && !slices.Contains(closed, sp) {
				closed = append(closed, sp)
			}
		}
	}
	return matches, closed, ranges
}

func (h *doorHandler) handle(f *capture.Frame) {
	var hit knock.Hit
	var flags uint8
	switch f.Proto {
	case capture.ProtoTCP:
		hit, flags = knock.Hit{Proto: port.TCP, Num: f.DstPort}, f.TCPFlags
	case capture.ProtoUDP:
		hit = knock.Hit{Proto: port.UDP, Num: f.DstPort}
	case capture.ProtoICMP, capture.ProtoICMPv6:
		if f.ICMPType != 8 && f.ICMPType != 128 { // echo request
			return
		}
		hit = knock.Hit{Proto: knock.ICMP, Num: uint16(min(len(f.Payload), 65535))}
	default:
		return
	}
	h.engine.Hit(f.Src, f.Dst, hit, flags, f.Time)
}

func (h *doorHandler) tracked() float64 {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	return float64(h.engine.Stats().Tracked)
}

// Log messages of progress events, named once so that a hit costs no
// string building.
var progressMsg = map[knock.EventKind]string{knock.Progress: "knock progress", knock.Duplicate: "knock duplicate"}

// event is the engine's callback; it runs with s.mu held, once per hit and
// more, so nothing is built for a line that will not be written.
func (h *doorHandler) event(ev knock.Event) {
	s := h.s
	var kind string
	switch ev.Kind {
	case knock.Completed:
		h.open(ev.Door, ev.Src)
		return
	case knock.Progress, knock.Duplicate:
		// Debug on stderr, but every line in a knockd LogFile; a flood of
		// spoofed first hits must not become a flood of disk writes.
		msg := progressMsg[ev.Kind]
		if !s.log.Enabled(context.Background(), slog.LevelDebug) {
			return
		}
		if ok, _ := s.logs.allow(msg, time.Now()); ok {
			s.log.Debug(msg, "door", ev.Door.Name, "src", ev.Src, "stage", ev.Stage)
		}
		return
	case knock.Failed:
		kind = mKnockFailed
	case knock.TimedOut:
		kind = mKnockTimedOut
	case knock.Evicted:
		kind = mKnockEvicted
	case knock.Refused:
		kind = mKnockRefused
	default:
		return
	}
	ok, suppressed := s.count(kind)
	if !ok {
		return
	}
	args := []any{"door", ev.Door.Name, "src", ev.Src, "stage", ev.Stage}
	switch ev.Kind {
	case knock.Failed:
		args = append(args, "got", ev.Got.String(), "want", ev.Want.String())
	case knock.TimedOut:
		args = append(args, "seq_timeout", ev.Door.SeqTimeout)
	case knock.Refused:
		args = append(args, "detail", ev.Detail)
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.log.Warn(kind, args...)
}

func (h *doorHandler) open(d *knock.Door, src netip.Addr) {
	s := h.s
	s.metrics.inc(mDoorOpened)
	args := []any{"door", d.Name, "src", src}
	if len(d.Open) > 0 {
		gs := make([]firewall.Grant, len(d.Open))
		for i, p := range d.Open {
			gs[i] = firewall.Grant{Addr: src, Port: p, Timeout: d.Duration}
		}
		if !s.grant(gs, src, d.Name) {
			return
		}
		args = append(args, "ports", port.Join(d.Open), "duration", d.Duration)
	}
	s.log.Info("door opened", args...)
	start, stop := d.Commands(src)
	if start == "" && stop == "" {
		return
	}
	if err := s.runner.Run(d.Name, src, start, stop, d.CmdTimeout); err != nil {
		s.metrics.inc(mCommandBlocked)
		s.log.Error("door command not run", "door", d.Name, "src", src, "err", err)
	}
}
