// Package server is the daemon. It routes each captured frame to the
// decoder of its knock language (package spa, fko, knock or covert), asks
// package policy about every request a decoder makes, applies what policy
// grants (firewall grants through the Keeper, commands through the runner)
// and writes one log line and one counter per decision, the same shape for
// every language. It owns no protocol logic of its own.
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
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/command"
	"github.com/postern/postern/config"
	"github.com/postern/postern/covert"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// Files in state_dir.
const (
	ReplayFile          = "spa-timestamps"        // postern SPA clients' last timestamps
	CovertReplayFile    = "covert-timestamps"     // covert clients' last timestamps
	FwknopReplayFile    = "fwknop-digests"        // fwknop replay cache
	PendingCommandsFile = "pending-commands.json" // stop commands waiting for their time
)

// Server is a configured daemon, ready to Run.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	fw      *firewall.Keeper
	policy  *policy.Policy
	runner  *command.Runner // nil if nothing runs commands
	metrics *Metrics
	logs    logLimiter

	// Decoders, nil where the configuration has none of the language.
	spa          *spa.Decoder
	spaReplay    *spa.Timestamps
	fwknop       *fko.Decoder
	fwknopReplay *fko.ReplayCache
	covert       *covert.Decoder
	covertReplay *spa.Timestamps
	doors        *knock.Decoder
	routes       routes
	sink         policy.Sink // s.decided, made once: a method value per packet would allocate

	// Source, if set before Run, is read instead of opening capture (an
	// in-memory source in tests).
	Source capture.Source
	afp    *capture.AFPacket // to follow doors whose ports change

	alive atomic.Int64 // when the expiry timer last ran (unix ns), for the watchdog

	// local holds this host's addresses, refreshed by the expiry timer:
	// with raw capture, a knock to another address does not count.
	local atomic.Pointer[map[netip.Addr]bool]
}

// routes say which decoder a frame goes to. They are computed once, from
// the configuration: a frame's protocol and destination port decide.
type routes struct {
	spaPort, fwknopPort uint16 // UDP; 0: none
	covert              map[uint16]bool
}

// New loads keys and state and prepares the decoders. It does not touch the
// firewall or the network: the caller installs the closed state (Rules)
// before, so that nothing New can fail on leaves a port open.
func New(cfg *config.Config, fw *firewall.Keeper, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, fw: fw}
	s.sink = s.decided
	if err := s.openState(); err != nil {
		return nil, err
	}
	outcomes := []outcome{{"capture", mMalformed}, {"capture", mCaptureError}, {"capture", mNotLocal}}
	var clients []policy.Client
	add := func(lang policy.Language, reasons ...string) {
		outcomes = append(outcomes, outcome{lang, mGranted}, outcome{lang, mFirewallError}, outcome{lang, mCommandNotRun},
			outcome{lang, mPendingFull})
		for _, r := range reasons {
			outcomes = append(outcomes, outcome{lang, r})
		}
		for _, r := range policy.Refusals {
			outcomes = append(outcomes, outcome{lang, string(r)})
		}
	}
	if len(cfg.Clients) > 0 {
		v, err := s.newVerifier()
		if err != nil {
			return nil, err
		}
		s.spa = spa.NewDecoder(v)
		s.routes.spaPort = cfg.SPA.Port
		for _, c := range cfg.Clients {
			clients = append(clients, policy.Client{Language: policy.SPA, Name: c.Name, Allow: c.Allow,
				MaxDuration: c.MaxDuration, DefaultDuration: c.DefaultDuration, AllowSource: c.AllowSource})
		}
		add(policy.SPA, spaReasons()...)
	}
	if f := cfg.Fwknop; f != nil {
		for _, st := range f.Stanzas {
			if st.OpenPorts == nil && st.CmdCycleOpen == "" {
				log.Warn("fwknop stanza has no OPEN_PORTS: it may open any port, but postern closes only the ports listed somewhere",
					"stanza", fko.StanzaName(st))
			}
			if st.GPG != nil && len(st.GPG.HMACKey) == 0 {
				log.Warn("fwknop GnuPG stanza without HMAC_KEY: anyone with the server's GnuPG public key can make postern run gpg "+
					"(bounded per source and in total, output capped); add an HMAC key", "stanza", fko.StanzaName(st))
			}
		}
		s.fwknop = fko.NewDecoder(fko.DecoderConfig{Stanzas: f.Stanzas, MaxAge: f.MaxPacketAge, Replay: s.fwknopReplay,
			Async: s.sink, Workers: 2, Queue: 64, PerSourceRate: 2, PerSourceBurst: 4})
		s.routes.fwknopPort = f.Port
		clients = append(clients, fko.PolicyClients(f.Stanzas)...)
		add(policy.Fwknop, fko.Reasons...)
	}
	if len(cfg.Covert) > 0 {
		d, err := covert.NewDecoder(cfg.Covert, s.covertReplay)
		if err != nil {
			return nil, err
		}
		s.covert = d
		s.routes.covert = map[uint16]bool{}
		for _, p := range covert.Ports(cfg.Covert) {
			s.routes.covert[p.Num] = true
		}
		clients = append(clients, covert.PolicyClients(cfg.Covert)...)
		add(policy.Covert, covert.Reasons...)
	}
	if len(cfg.Doors) > 0 {
		s.doors = knock.NewDecoder(cfg.Doors, cfg.MaxTracked)
		for _, d := range cfg.Doors {
			clients = append(clients, knock.PolicyClient(d))
		}
		add(policy.Door, knock.Reasons...)
	}
	s.policy = policy.New(clients)
	s.metrics = newMetrics(outcomes)
	if s.doors != nil {
		s.metrics.gauge("postern_knock_attempts_tracked", "Knock attempts (source × door) in the state table.",
			func() float64 { return float64(s.doors.Tracked()) })
	}
	if s.covert != nil {
		s.metrics.gauge("postern_covert_sources_evicted", "Covert-knock sources evicted from the full reassembly table.",
			func() float64 { return float64(s.covert.Evictions()) })
	}
	s.metrics.gauge("postern_firewall_restores", "Times postern's firewall rules were found missing or altered and restored.",
		func() float64 { return float64(fw.Restores()) })
	return s, nil
}

// openState opens the state files each language needs and the command
// runner (which runs overdue stop commands at once).
func (s *Server) openState() error {
	cfg := s.cfg
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	state := func(name string) string { return filepath.Join(cfg.StateDir, name) }
	// The daemon runs what its state says (pending stop commands) with its
	// privileges: state that someone else could have written is refused.
	if err := atomicfile.CheckTrusted(cfg.StateDir, true); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	for _, name := range []string{ReplayFile, CovertReplayFile, FwknopReplayFile, PendingCommandsFile} {
		if err := atomicfile.CheckTrusted(state(name), false); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	var err error
	if len(cfg.Clients) > 0 {
		if s.spaReplay, err = spa.LoadTimestamps(state(ReplayFile)); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	if len(cfg.Covert) > 0 {
		if s.covertReplay, err = spa.LoadTimestamps(state(CovertReplayFile)); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	if f := cfg.Fwknop; f != nil {
		// A packet is refused once its timestamp is max_packet_age away
		// from the clock in either direction, so a digest need not be kept
		// longer than twice that, plus a margin.
		if s.fwknopReplay, err = fko.OpenReplayCache(state(FwknopReplayFile), 2*f.MaxPacketAge+time.Minute, 1_000_000); err != nil {
			return err
		}
	}
	if needsCommands(cfg) {
		if s.runner, err = command.Open(state(PendingCommandsFile), s.log); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) newVerifier() (*spa.Verifier, error) {
	cfg := s.cfg
	text, err := spa.ReadPrivateKeyFile(cfg.PrivateKeyFile)
	if err != nil {
		return nil, fmt.Errorf("private_key_file: %w", err)
	}
	key, err := spa.ParseServerPrivateKey(text)
	if err != nil {
		return nil, fmt.Errorf("private_key_file %s: %w", cfg.PrivateKeyFile, err)
	}
	clients := make(map[spa.ClientPublicKey]string, len(cfg.Clients))
	for _, c := range cfg.Clients {
		clients[c.PublicKey] = c.Name
	}
	// Five knocks a second with bursts of ten per source is far above what
	// a person does and far below what costs the CPU anything.
	limiter := spa.NewRateLimiter(5, 10, 65536)
	limiter.SetIPv6Prefix(cfg.SPA.SourcePrefix6)
	return spa.NewVerifier(spa.VerifierConfig{
		Key: key, Clients: clients, MaxSkew: cfg.SPA.MaxSkew, Destinations: cfg.SPA.Destinations,
		Replay: s.spaReplay, Limiter: limiter,
	})
}

func spaReasons() []string {
	var names []string
	for _, r := range spa.AllReasons() {
		if r != spa.Accepted {
			names = append(names, r.String())
		}
	}
	return names
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
	if ps := covert.Ports(cfg.Covert); len(ps) > 0 {
		matches = append(matches, capture.PortMatches(ps)...)
		rules.Knock = append(rules.Knock, ps...)
	}
	m, closed, ranges := doorPorts(cfg)
	matches = append(matches, m...)
	rules.Knock = append(rules.Knock, closed...)
	rules.KnockRanges = ranges
	return rules, matches
}

// doorPorts returns what capture must pass for doors, which ports postern
// closes (the sequences of [[door]]s; knockd_file doors are only listened
// to, as knockd does) and the closed ranges of rotating doors.
func doorPorts(cfg *config.Config) (matches []capture.Match, closed []port.Spec, ranges []firewall.PortRange) {
	var fromKnockd []*knock.Door
	if cfg.Knockd != nil {
		fromKnockd = cfg.Knockd.Doors
	}
	for _, d := range cfg.Doors {
		native := !slices.Contains(fromKnockd, d)
		if r := d.Rotating; r != nil {
			matches = append(matches, capture.Match{Proto: r.Proto, Lo: r.Lo, Hi: r.Hi})
			if native {
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
			if native && hit.Proto != knock.ICMP && !slices.Contains(closed, sp) {
				closed = append(closed, sp)
			}
		}
	}
	return matches, closed, ranges
}

// needsCommands reports whether any door or fwknop stanza runs commands.
func needsCommands(cfg *config.Config) bool {
	for _, d := range cfg.Doors {
		if knock.PolicyClient(d).Commands {
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

// Intervals of the daemon's housekeeping.
const (
	expireEvery    = 250 * time.Millisecond // knock attempts and covert SYNs time out
	auditEvery     = 250 * time.Millisecond // firewall audit: a flushed ruleset is back within a second
	auditIPTables  = 500 * time.Millisecond // the same by running iptables-save and ipset: a few ms each
	interfaceEvery = 250 * time.Millisecond // capture interfaces: a re-created one is read within a second
)

// Run opens the capture, installs the firewall rules (again: the caller
// installed them before New), reports readiness and handles knocks until
// ctx ends. Its goroutines run as one task group: readiness is reported
// when all are up, and Run returns only after every one has stopped (and
// the GnuPG workers have finished), so no knock is granted after the
// grants are removed on exit.
func (s *Server) Run(ctx context.Context) error {
	defer s.closeState()
	rules, matches := Rules(s.cfg)
	src, err := s.openCapture(matches)
	if err != nil {
		return err
	}
	defer src.Close()
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
		if err := writePidFile(s.cfg.Knockd.PidFile); err != nil {
			return fmt.Errorf("%s: PidFile: %w", s.cfg.Knockd.Path, err)
		}
		defer os.Remove(s.cfg.Knockd.PidFile)
	}
	// Sockets, listeners and files are open: keep only what the daemon
	// needs from here on (not in tests that inject a capture source).
	if s.Source == nil {
		if dropped, err := privilegesFor(s.cfg).drop(); err != nil {
			return fmt.Errorf("dropping privileges: %w", err)
		} else if dropped {
			s.log.Debug("dropped privileges")
		}
	}

	s.alive.Store(time.Now().UnixNano())
	s.refreshLocal()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { s.expireLoop(gctx); return nil })
	audit := auditEvery
	if s.cfg.Firewall.Backend == "iptables" {
		audit = auditIPTables
	}
	g.Go(func() error { s.fw.Watch(gctx, audit, nil); return nil })
	if s.afp != nil {
		g.Go(func() error {
			return s.afp.Watch(gctx, interfaceEvery, func(name string, index int) {
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
		if s.afp != nil {
			return s.afp.RunWithErrors(gctx, s.handle, s.captureError)
		}
		return src.Run(gctx, s.handle)
	})

	s.log.Info("ready", "capture", s.cfg.Capture, "interface", s.cfg.Interface, "spa_port", s.spaPort(),
		"protected", port.Join(rules.Protected), "clients", len(s.cfg.Clients), "doors", len(s.cfg.Doors),
		"fwknop_stanzas", s.fwknopStanzas(), "backend", s.cfg.Firewall.Backend)
	notify("READY=1")

	err = g.Wait()
	if s.fwknop != nil {
		s.fwknop.Close() // no GnuPG verdict after this
	}
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

// writePidFile writes the pid through a new file renamed into place, never
// following a symbolic link (as root, that would write wherever it points).
func writePidFile(path string) error {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symbolic link; refusing to write through it", path)
	}
	return atomicfile.Write(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
}

// openCapture opens the configured capture, unless a Source was given.
func (s *Server) openCapture(matches []capture.Match) (capture.Source, error) {
	if s.Source != nil {
		return s.Source, nil
	}
	if s.cfg.Capture == "udp" {
		var srcs []capture.Source
		for _, m := range matches {
			u, err := capture.ListenUDP(m.Lo)
			if err != nil {
				for _, o := range srcs {
					o.Close()
				}
				return nil, err
			}
			srcs = append(srcs, u)
		}
		return capture.Multi(srcs...), nil
	}
	a, err := capture.OpenAFPacket(s.cfg.Interface, matches)
	if err != nil {
		return nil, err
	}
	s.afp = a
	if missing := a.Missing(); len(missing) > 0 {
		s.log.Warn("waiting for interface", "interface", strings.Join(missing, ","))
	}
	return a, nil
}

// closeState stops the runner (pending stop commands stay recorded) and
// closes the fwknop replay cache.
func (s *Server) closeState() {
	if s.fwknop != nil {
		s.fwknop.Close()
	}
	if s.runner != nil {
		s.runner.Close()
	}
	if s.fwknopReplay != nil {
		s.fwknopReplay.Close()
	}
}

func (s *Server) spaPort() any {
	if s.spa == nil {
		return "none"
	}
	return s.cfg.SPA.Port
}

func (s *Server) fwknopStanzas() int {
	if s.cfg.Fwknop == nil {
		return 0
	}
	return len(s.cfg.Fwknop.Stanzas)
}

// handle routes one frame to its language's decoder. Capture calls it
// from one goroutine at a time; decoders with state shared with the
// expiry timer (doors, covert) lock it themselves, so one language never
// waits for another.
func (s *Server) handle(f *capture.Frame, perr error) {
	if perr != nil {
		s.refuse(&policy.Verdict{Language: "capture", Src: f.Src, Reason: mMalformed}, slog.String("detail", perr.Error()))
		return
	}
	if local := s.local.Load(); local != nil && !(*local)[f.Dst] {
		s.refuse(&policy.Verdict{Language: "capture", Src: f.Src, Reason: mNotLocal}, slog.String("dst", f.Dst.String()))
		return
	}
	switch f.Proto {
	case capture.ProtoUDP:
		isSPA := s.routes.spaPort != 0 && f.DstPort == s.routes.spaPort
		isFwknop := s.routes.fwknopPort != 0 && f.DstPort == s.routes.fwknopPort
		if isSPA && isFwknop {
			// postern SPA and fwknop may share a port: a postern knock is
			// binary with a fixed size and first byte, an fwknop packet is
			// base64 text.
			isSPA = spa.IsKnock(f.Payload)
			isFwknop = !isSPA
		}
		switch {
		case isSPA:
			s.spa.Decode(f, s.sink)
			return
		case isFwknop:
			s.fwknop.Decode(f, s.sink)
			return
		}
	case capture.ProtoTCP:
		if s.routes.covert[f.DstPort] {
			s.covert.Decode(f, s.sink)
			return
		}
	}
	if s.doors != nil {
		s.doors.Decode(f, s.sink)
		if s.doors.PortsChanged() {
			s.followDoorPorts()
		}
	}
}

// followDoorPorts re-derives the closed ports and the capture filter after
// a door's sequence changed (a one-time sequence was used).
func (s *Server) followDoorPorts() {
	rules, matches := Rules(s.cfg)
	if err := s.fw.Setup(rules); err != nil {
		s.log.Error("closing the next one-time sequence's ports", "err", err)
	}
	if s.afp != nil {
		if err := s.afp.SetMatches(matches); err != nil {
			s.log.Error("capturing the next one-time sequence's ports", "err", err)
		}
	}
}

// expireLoop drops timed-out knock attempts and stale covert SYNs, and
// clamps client timestamps ahead of the clock. Each tick also tells the
// watchdog that the daemon is not wedged.
func (s *Server) expireLoop(ctx context.Context) {
	t := time.NewTicker(expireEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if s.doors != nil {
				s.doors.Expire(now, s.sink)
			}
			if s.covert != nil {
				s.covert.Expire(now)
			}
			s.clampClocks(now)
			s.refreshLocal()
			s.alive.Store(time.Now().UnixNano())
		}
	}
}

// refreshLocal re-reads this host's addresses when raw capture sees
// packets for any destination.
func (s *Server) refreshLocal() {
	if s.afp == nil || s.cfg.AnyDestination {
		return
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return // keep the last known set
	}
	m := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			m[p.Addr().Unmap()] = true
		}
	}
	s.local.Store(&m)
}

// clampClocks lowers stored client timestamps that lie beyond the
// freshness window: after a clock that ran ahead is corrected, no client
// stays locked out as "replay" for longer than max_skew.
func (s *Server) clampClocks(now time.Time) {
	if s.spaReplay != nil {
		if n := s.spaReplay.ClampFuture(now.Add(s.cfg.SPA.MaxSkew).UnixNano()); n > 0 {
			s.log.Warn("client timestamps ahead of this clock (was it corrected?); clamped to now + max_skew",
				"clients", n, "max_skew", s.cfg.SPA.MaxSkew)
		}
	}
	if s.covertReplay != nil {
		if n := s.covertReplay.ClampFuture(now.Add(covert.MaxSkew(s.cfg.Covert)).UnixNano()); n > 0 {
			s.log.Warn("covert client timestamps ahead of this clock; clamped", "clients", n)
		}
	}
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
	if ok, suppressed := s.count(outcome{"capture", mCaptureError}); ok {
		s.log.Warn("capture read failed; still reading", "err", err, "suppressed", suppressed)
	}
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
