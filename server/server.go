// Package server is the daemon: it wires capture → decode → policy →
// firewall for SPA knocks and knock sequences, writes one log line per
// decision and keeps the counters. It owns no protocol logic of its own.
package server

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"postern/capture"
	"postern/command"
	"postern/config"
	"postern/firewall"
	"postern/port"
	"postern/spa"
)

// Server is a configured daemon, ready to Run.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	fw      *firewall.Keeper
	spa     *spaHandler     // nil without [[client]]s
	doors   *doorHandler    // nil without doors
	fwknop  *fwknopHandler  // nil without [fwknop]
	covert  *covertHandler  // nil without [[covert]]
	runner  *command.Runner // commands of doors and fwknop stanzas; nil if none
	metrics *Metrics
	logs    logLimiter
	mu      sync.Mutex   // serialises packets and the expiry timer
	alive   atomic.Int64 // when the expiry timer last got the packet lock (unix ns)
}

// New loads keys and state and prepares the pipeline. It does not touch the
// firewall or the network: the caller installs the closed state (Rules)
// before, so that nothing New can fail on leaves a port open.
func New(cfg *config.Config, fw *firewall.Keeper, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, fw: fw}
	reasons := []string{mMalformed, mFirewallError, mCaptureError}
	if len(cfg.Clients) > 0 {
		h, err := newSPAHandler(s)
		if err != nil {
			return nil, err
		}
		s.spa = h
		reasons = append(reasons, spaMetricNames()...)
	}
	if needsCommands(cfg) {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("state_dir: %w", err)
		}
		r, err := command.Open(filepath.Join(cfg.StateDir, PendingCommandsFile), log)
		if err != nil {
			return nil, err
		}
		s.runner = r
	}
	if cfg.Fwknop != nil {
		h, err := newFwknopHandler(s)
		if err != nil {
			return nil, err
		}
		s.fwknop = h
		reasons = append(reasons, fwknopMetricNames...)
	}
	if len(cfg.Covert) > 0 {
		h, err := newCovertHandler(s)
		if err != nil {
			return nil, err
		}
		s.covert = h
		reasons = append(reasons, covertMetricNames...)
	}
	if len(cfg.Doors) > 0 {
		h, err := newDoorHandler(s)
		if err != nil {
			return nil, err
		}
		s.doors = h
		reasons = append(reasons, doorMetricNames...)
	}
	s.metrics = newMetrics(reasons)
	if s.doors != nil {
		s.metrics.gauge("postern_knock_attempts_tracked", "Knock attempts (source × door) in the state table.",
			s.doors.tracked)
	}
	if s.covert != nil {
		s.metrics.gauge("postern_covert_sources_evicted", "Covert-knock sources evicted from the full reassembly table.",
			s.covert.evictions)
	}
	s.metrics.gauge("postern_firewall_restores", "Times postern's firewall rules were found missing or altered and restored.",
		func() float64 { return float64(fw.Restores()) })
	return s, nil
}

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Rules derives, from the configuration alone, what the firewall closes
// and what capture must pass. It needs no key or state file, so the closed
// state can be installed before anything that may fail is loaded.
func Rules(cfg *config.Config) (firewall.Rules, []capture.Match) {
	rules := firewall.Rules{Protected: cfg.Protected()}
	var matches []capture.Match
	closeKnock := func(ps ...port.Spec) {
		if cfg.Capture == "afpacket" {
			rules.Knock = append(rules.Knock, ps...)
		}
	}
	if len(cfg.Clients) > 0 {
		knockPort := port.Spec{Proto: port.UDP, Num: cfg.SPA.Port}
		matches = append(matches, capture.PortMatches([]port.Spec{knockPort})...)
		closeKnock(knockPort)
	}
	if cfg.Fwknop != nil {
		// The fwknop port may be the SPA port: capture and close it once.
		p := port.Spec{Proto: port.UDP, Num: cfg.Fwknop.Port}
		if m := (capture.Match{Proto: p.Proto, Lo: p.Num, Hi: p.Num}); !slices.Contains(matches, m) {
			matches = append(matches, m)
			closeKnock(p)
		}
	}
	if ps := covertPorts(cfg); len(ps) > 0 {
		matches = append(matches, capture.PortMatches(ps)...)
		rules.Knock = append(rules.Knock, ps...)
	}
	m, closed, ranges := doorPorts(cfg)
	matches = append(matches, m...)
	rules.Knock = append(rules.Knock, closed...)
	rules.KnockRanges = ranges
	return rules, matches
}

// Intervals of the daemon's housekeeping.
const (
	auditEvery     = 250 * time.Millisecond // firewall audit: a flushed ruleset is back within a second
	auditIPTables  = 500 * time.Millisecond // the same by running iptables-save and ipset: a few ms each
	interfaceEvery = 250 * time.Millisecond // capture interfaces: a re-created one is read within a second
)

// Run opens the capture, installs the firewall rules (again: the caller
// installed them before New), reports readiness and handles knocks until
// ctx ends. Its goroutines run as one task group: readiness is reported
// when all are up, and Run returns only after every one has stopped, so no
// packet is handled after the grants are removed on exit.
func (s *Server) Run(ctx context.Context) error {
	rules, matches := Rules(s.cfg)
	var src capture.Source
	var afp *capture.AFPacket
	switch s.cfg.Capture {
	case "udp":
		var srcs []capture.Source
		for _, m := range matches {
			u, err := capture.ListenUDP(m.Lo)
			if err != nil {
				for _, o := range srcs {
					o.Close()
				}
				return err
			}
			srcs = append(srcs, u)
		}
		src = capture.Multi(srcs...)
	default:
		a, err := capture.OpenAFPacket(s.cfg.Interface, matches)
		if err != nil {
			return err
		}
		src, afp = a, a
		if missing := a.Missing(); len(missing) > 0 {
			s.log.Warn("waiting for interface", "interface", strings.Join(missing, ","))
		}
	}
	defer src.Close()
	if dropped, err := dropNetRaw(); err != nil {
		return fmt.Errorf("dropping CAP_NET_RAW: %w", err)
	} else if dropped {
		s.log.Debug("dropped CAP_NET_RAW")
	}
	if err := s.fw.Setup(rules); err != nil {
		return err
	}
	s.warnHostPolicy(rules)
	if s.cfg.MetricsListen != "" {
		hs, err := s.metrics.serve(s.cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics_listen: %w", err)
		}
		defer hs.Close()
	}
	if s.cfg.Knockd != nil && s.cfg.Knockd.PidFile != "" {
		if err := os.WriteFile(s.cfg.Knockd.PidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fmt.Errorf("PidFile: %w", err)
		}
		defer os.Remove(s.cfg.Knockd.PidFile)
	}
	if s.runner != nil {
		defer s.runner.Close()
	}
	if s.fwknop != nil {
		defer s.fwknop.replay.Close()
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { s.expireLoop(gctx); return nil })
	audit := auditEvery
	if s.cfg.Firewall.Backend == "iptables" {
		audit = auditIPTables
	}
	g.Go(func() error { s.fw.Watch(gctx, audit, nil); return nil })
	if afp != nil {
		g.Go(func() error {
			return afp.Watch(gctx, interfaceEvery, func(name string, index int) {
				if index == 0 {
					s.log.Warn("interface gone; waiting for it", "interface", name)
				} else {
					s.log.Info("interface up; capturing", "interface", name, "index", index)
				}
			})
		})
	}
	g.Go(func() error { return s.watchdog(gctx) })
	g.Go(func() error {
		if afp != nil {
			return afp.RunWithErrors(gctx, s.handle, s.captureError)
		}
		return src.Run(gctx, s.handle)
	})

	fwknopStanzas := 0
	if s.fwknop != nil {
		fwknopStanzas = len(s.cfg.Fwknop.Stanzas)
	}
	s.log.Info("ready", "capture", s.cfg.Capture, "interface", s.cfg.Interface, "spa_port", s.spaPort(),
		"protected", port.Join(rules.Protected), "clients", len(s.cfg.Clients), "doors", len(s.cfg.Doors),
		"fwknop_stanzas", fwknopStanzas, "backend", s.cfg.Firewall.Backend)
	notify("READY=1")

	err := g.Wait()
	if s.cfg.Firewall.RemoveOnExit {
		if gs, lerr := s.fw.List(); lerr == nil && len(gs) > 0 {
			if rerr := s.fw.Revoke(gs); rerr != nil {
				s.log.Error("removing grants on exit", "err", rerr)
			} else {
				s.log.Info("removed grants on exit", "count", len(gs))
			}
		}
	}
	return err
}

// warnHostPolicy warns when the host's own ruleset drops by default: a
// grant then opens nothing unless that ruleset accepts the protected ports
// (postern drops them for everyone without a grant before it runs).
func (s *Server) warnHostPolicy(rules firewall.Rules) {
	w, ok := s.fw.Backend().(interface{ HostPolicyWarnings() []string })
	if !ok || len(rules.Protected) == 0 {
		return
	}
	for _, msg := range w.HostPolicyWarnings() {
		s.log.Warn("the host's firewall may drop granted traffic: accept the protected ports in it "+
			"(postern already drops them for everyone without a grant)", "where", msg, "protected", port.Join(rules.Protected))
	}
}

// captureError logs a read error of the capture, which goes on reading:
// an interface that goes down or away reports one.
func (s *Server) captureError(err error) {
	if ok, suppressed := s.count(mCaptureError); ok {
		s.log.Warn("capture read failed; still reading", "err", err, "suppressed", suppressed)
	}
}

func (s *Server) spaPort() any {
	if s.spa == nil {
		return "none"
	}
	return s.cfg.SPA.Port
}

// handle routes one packet. It runs on the capture goroutine; s.mu keeps
// the expiry timer out of the stateful handlers meanwhile.
func (s *Server) handle(f *capture.Frame, perr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if perr != nil {
		s.refuse(f.Src, "", mMalformed, slog.String("detail", perr.Error()))
		return
	}
	if f.Proto == capture.ProtoUDP {
		// postern SPA and fwknop may share a port: a postern knock is
		// binary with a fixed size and first byte, an fwknop packet is
		// base64 text.
		isSPA := s.spa != nil && f.DstPort == s.cfg.SPA.Port
		isFwknop := s.fwknop != nil && f.DstPort == s.cfg.Fwknop.Port
		if isSPA && isFwknop {
			isSPA = spa.IsKnock(f.Payload)
			isFwknop = !isSPA
		}
		switch {
		case isSPA:
			s.spa.handle(f)
			return
		case isFwknop:
			s.fwknop.handle(f)
			return
		}
	}
	if s.covert != nil && s.covert.handle(f) {
		return
	}
	if s.doors != nil {
		s.doors.handle(f)
	}
}

// expireLoop drops timed-out knock attempts and stale covert SYNs. Each
// tick also proves to the watchdog that the packet lock is not wedged.
func (s *Server) expireLoop(ctx context.Context) {
	t := time.NewTicker(expireEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			if s.doors != nil {
				s.doors.engine.Expire(now)
			}
			if s.covert != nil {
				s.covert.expire(now)
			}
			s.mu.Unlock()
			s.clampClocks(now)
			s.alive.Store(time.Now().UnixNano())
		}
	}
}

// clampClocks lowers stored client timestamps that lie beyond the
// freshness window: after a clock that ran ahead is corrected, no client
// stays locked out as "replay" for longer than max_skew.
func (s *Server) clampClocks(now time.Time) {
	if s.spa != nil {
		if n := s.spa.replay.ClampFuture(now.Add(s.cfg.SPA.MaxSkew).UnixNano()); n > 0 {
			s.log.Warn("client timestamps ahead of this clock (was it corrected?); clamped to now + max_skew",
				"clients", n, "max_skew", s.cfg.SPA.MaxSkew)
		}
	}
	if s.covert != nil {
		if n := s.covert.replay.ClampFuture(now.Add(s.covert.maxSkew()).UnixNano()); n > 0 {
			s.log.Warn("covert client timestamps ahead of this clock; clamped", "clients", n)
		}
	}
}

// needsCommands reports whether any door or fwknop stanza runs commands.
func needsCommands(cfg *config.Config) bool {
	for _, d := range cfg.Doors {
		start4, stop4 := d.Commands(ipv4Example)
		start6, stop6 := d.Commands(ipv6Example)
		if start4 != "" || stop4 != "" || start6 != "" || stop6 != "" {
			return true
		}
	}
	if cfg.Fwknop != nil {
		for _, st := range cfg.Fwknop.Stanzas {
			if st.CmdCycleOpen != "" || st.EnableCmdExec {
				return true
			}
		}
	}
	return false
}

// grant opens ports through the firewall, counting and logging a failure.
func (s *Server) grant(gs []firewall.Grant, src netip.Addr, who string) bool {
	for i := range gs {
		gs[i].Name = cmp.Or(gs[i].Name, who)
	}
	if err := s.fw.Grant(gs); err != nil {
		s.metrics.inc(mFirewallError)
		s.log.Error("grant failed", "src", src, "client", who, "err", err)
		return false
	}
	return true
}

// count counts a decision of this kind and says whether to log it: each
// kind logs a burst, then about ten lines a second, and the next line
// carries how many were held back. Every path that refuses or fails uses
// it, so a flood of any one kind is counted in full and logged in brief.
func (s *Server) count(kind string) (log bool, suppressed int) {
	s.metrics.inc(kind)
	return s.logs.allow(kind, time.Now())
}

// refuse counts a refusal and logs it, unless this reason is flooding.
func (s *Server) refuse(src netip.Addr, client, reason string, attrs ...slog.Attr) {
	ok, suppressed := s.count(reason)
	if !ok {
		return
	}
	args := []any{"src", src, "reason", reason}
	if client != "" {
		args = append(args, "client", client)
	}
	for _, a := range attrs {
		args = append(args, a)
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.log.Warn("refused", args...)
}

// notify sends a state line to systemd (Type=notify), if the daemon runs
// under systemd.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}
