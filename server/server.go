// Package server is the daemon: it wires capture → decode → policy →
// firewall for SPA knocks and knock sequences, writes one log line per
// decision and keeps the counters. It owns no protocol logic of its own.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

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
	fw      firewall.Backend
	spa     *spaHandler     // nil without [[client]]s
	doors   *doorHandler    // nil without doors
	fwknop  *fwknopHandler  // nil without [fwknop]
	covert  *covertHandler  // nil without [[covert]]
	runner  *command.Runner // commands of doors and fwknop stanzas; nil if none
	metrics *Metrics
	logs    logLimiter
	mu      sync.Mutex // serialises packets and the expiry timer
}

// New loads keys and state and prepares the pipeline. It does not touch the
// firewall or the network.
func New(cfg *config.Config, fw firewall.Backend, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, fw: fw}
	reasons := []string{mMalformed, mFirewallError}
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
	return s, nil
}

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// rules and matches derive the firewall rules and the capture filter from
// the configuration.
func (s *Server) rules() (firewall.Rules, []capture.Match) {
	rules := firewall.Rules{Protected: s.cfg.Protected()}
	var matches []capture.Match
	if s.spa != nil {
		knockPort := port.Spec{Proto: port.UDP, Num: s.cfg.SPA.Port}
		matches = append(matches, capture.PortMatches([]port.Spec{knockPort})...)
		if s.cfg.Capture == "afpacket" {
			rules.Knock = append(rules.Knock, knockPort)
		}
	}
	if s.fwknop != nil {
		// The fwknop port may be the SPA port: capture and close it once.
		p := port.Spec{Proto: port.UDP, Num: s.cfg.Fwknop.Port}
		if m := (capture.Match{Proto: p.Proto, Lo: p.Num, Hi: p.Num}); !slices.Contains(matches, m) {
			matches = append(matches, m)
			if s.cfg.Capture == "afpacket" {
				rules.Knock = append(rules.Knock, p)
			}
		}
	}
	if s.covert != nil {
		ps := s.covert.ports()
		matches = append(matches, capture.PortMatches(ps)...)
		rules.Knock = append(rules.Knock, ps...)
	}
	if s.doors != nil {
		m, closed, ranges := s.doors.ports()
		matches = append(matches, m...)
		rules.Knock = append(rules.Knock, closed...)
		rules.KnockRanges = ranges
	}
	return rules, matches
}

// Run opens the capture, installs the firewall rules, reports readiness and
// handles knocks until ctx ends. Capture opens first: if it cannot, the
// firewall is left as it was.
func (s *Server) Run(ctx context.Context) error {
	rules, matches := s.rules()
	var src capture.Source
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
		src = a
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
	go s.expireLoop(ctx)
	if s.runner != nil {
		defer s.runner.Close()
	}
	if s.fwknop != nil {
		defer s.fwknop.replay.Close()
	}
	fwknopStanzas := 0
	if s.fwknop != nil {
		fwknopStanzas = len(s.cfg.Fwknop.Stanzas)
	}
	s.log.Info("ready", "capture", s.cfg.Capture, "interface", s.cfg.Interface, "spa_port", s.spaPort(),
		"protected", port.Join(rules.Protected), "clients", len(s.cfg.Clients), "doors", len(s.cfg.Doors),
		"fwknop_stanzas", fwknopStanzas, "backend", s.cfg.Firewall.Backend)
	notifyReady()

	err := src.Run(ctx, s.handle)
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

// expireLoop drops timed-out knock attempts and stale covert SYNs.
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

// notifyReady tells systemd (Type=notify) that the daemon is up, if it runs
// under systemd.
func notifyReady() {
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
	c.Write([]byte("READY=1"))
}
