// Package server is the daemon. It routes each captured frame to the
// decoder of its knock language (package spa, fko, knock or covert), asks
// package policy about every request a decoder makes, applies what policy
// grants (firewall grants through the Keeper, commands through the runner)
// and writes one log line and one counter per decision, the same shape for
// every language. It owns no protocol logic of its own.
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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/command"
	"github.com/postern/postern/config"
	"github.com/postern/postern/control"
	"github.com/postern/postern/covert"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/ratelimit"
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
	cfg     *config.Config // as started: what a reload cannot change
	log     *slog.Logger
	fw      *firewall.Keeper
	runner  *command.Runner // nil until something runs commands
	metrics *Metrics
	logs    logLimiter
	sink    policy.Sink // s.decided, made once: a method value per packet would allocate

	// State that outlives a reload, opened when a language first needs it.
	spaReplay    *spa.Timestamps
	fwknopReplay *fko.ReplayCache
	covertReplay *spa.Timestamps

	// pipe is the configuration in force with its decoders and policy; a
	// reload builds a new one and swaps it in whole.
	pipe atomic.Pointer[pipeline]

	// Source, if set before Run, is read instead of opening capture (an
	// in-memory source in tests).
	Source capture.Source
	// Version is what postern_build_info reports (set before Run).
	Version string
	// ControlPath, if set before Run, is where the control socket listens.
	ControlPath string
	// Hangups, if set before Run, asks for a reload of the configuration
	// file (SIGHUP), after ReopenLogs (the knockd LogFile, for logrotate).
	Hangups    <-chan os.Signal
	ReopenLogs func() error
	retired    sync.WaitGroup    // pipelines replaced by a reload, still closing
	reloading  sync.Mutex        // one reload at a time (SIGHUP, control socket)
	afp        *capture.AFPacket // to follow doors whose ports change

	alive atomic.Int64 // when the expiry timer last ran (unix ns), for the watchdog

	stateWarned time.Time // when persistState last said the disk refuses writes (the expiry timer's)

	// local holds this host's addresses, refreshed by the expiry timer:
	// with raw capture, a knock to another address does not count.
	local atomic.Pointer[map[netip.Addr]bool]
}

// pipeline is one configuration's decoders, policy and routes; decoders
// are nil where the configuration has none of their language.
type pipeline struct {
	cfg    *config.Config
	policy *policy.Policy
	spa    *spa.Decoder
	fwknop *fko.Decoder
	covert *covert.Decoder
	doors  *knock.Decoder
	routes routes
}

// routes say which decoder a frame goes to. They are computed once per
// configuration: a frame's protocol and destination port decide.
type routes struct {
	spaPort, fwknopPort uint16 // UDP; 0: none
	covert              map[uint16]bool
}

// languages and the reasons each may refuse for, for the counters.
var languages = []struct {
	lang    policy.Language
	reasons []string
}{{policy.SPA, spaReasons()}, {policy.Fwknop, fko.Reasons}, {policy.Covert, covert.Reasons}, {policy.Door, knock.Reasons}}

// New loads keys and state and prepares the decoders. It does not touch the
// firewall or the network: the caller installs the closed state (Rules)
// before, so that nothing New can fail on leaves a port open.
func New(cfg *config.Config, fw *firewall.Keeper, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, fw: fw}
	s.sink = s.decided
	p, err := s.newPipeline(cfg)
	if err != nil {
		return nil, err
	}
	s.pipe.Store(p)
	// Every language's counters exist from the start: a reload may add one.
	outcomes := []outcome{{"capture", mMalformed}, {"capture", mCaptureError}, {"capture", mNotLocal}}
	for _, l := range languages {
		outcomes = append(outcomes, outcome{l.lang, mGranted}, outcome{l.lang, mClosed}, outcome{l.lang, mNotOwned},
			outcome{l.lang, mFirewallError},
			outcome{l.lang, mCommandNotRun}, outcome{l.lang, mPendingFull})
		for _, r := range l.reasons {
			outcomes = append(outcomes, outcome{l.lang, r})
		}
		for _, r := range policy.Refusals {
			outcomes = append(outcomes, outcome{l.lang, string(r)})
		}
	}
	s.metrics = newMetrics(outcomes)
	s.metrics.gauge("postern_knock_attempts_tracked", "Knock attempts (source × door) in the state table.",
		func() float64 {
			if d := s.pipe.Load().doors; d != nil {
				return float64(d.Tracked())
			}
			return 0
		})
	s.metrics.counter("postern_covert_sources_evicted_total", "Covert-knock sources evicted from the full reassembly table.",
		func() float64 {
			if c := s.pipe.Load().covert; c != nil {
				return float64(c.Evictions())
			}
			return 0
		})
	s.metrics.counter("postern_firewall_restores_total", "Times postern's firewall rules were found missing or altered and restored.",
		func() float64 { return float64(fw.Restores()) })
	s.metrics.labeled("postern_grants_live", "Grants live in the kernel now.", fmt.Sprintf("backend=%q", cfg.Firewall.Backend),
		func() float64 {
			gs, err := fw.List()
			if err != nil {
				return -1
			}
			return float64(len(gs))
		})
	s.metrics.known = func(lang policy.Language, name string) bool { return s.pipe.Load().policy.Knows(lang, name) }
	return s, nil
}

// newPipeline opens the state cfg needs and builds its decoders and policy.
func (s *Server) newPipeline(cfg *config.Config) (*pipeline, error) {
	if err := s.openState(cfg); err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings {
		s.log.Warn("configuration: " + w)
	}
	p := &pipeline{cfg: cfg}
	var clients []policy.Client
	if cfg.SPAEnabled() {
		v, err := s.newVerifier(cfg)
		if err != nil {
			return nil, err
		}
		p.spa = spa.NewParallelDecoder(v, cmp.Or(cfg.SPA.Workers, runtime.GOMAXPROCS(0)), s.sink)
		p.routes.spaPort = cfg.SPA.Port
		for _, c := range cfg.Clients {
			clients = append(clients, policy.Client{Language: policy.SPA, Name: c.Name, Allow: c.Allow,
				MaxDuration: c.MaxDuration, DefaultDuration: c.DefaultDuration, AllowSource: c.AllowSource,
				Forward: c.Forward})
		}
		if cfg.SSH != nil {
			for _, id := range cfg.SSH.Identities {
				clients = append(clients, policy.Client{Language: policy.SPA, Name: id.Name, Allow: id.Allow,
					MaxDuration: id.MaxDuration, DefaultDuration: id.DefaultDuration, AllowSource: id.AllowSource})
			}
		}
	}
	if len(cfg.Covert) > 0 {
		d, err := covert.NewDecoder(cfg.Covert, s.covertReplay)
		if err != nil {
			return nil, err
		}
		p.covert = d
		p.routes.covert = map[uint16]bool{}
		for _, sp := range covert.Ports(cfg.Covert) {
			p.routes.covert[sp.Num] = true
		}
		clients = append(clients, covert.PolicyClients(cfg.Covert)...)
	}
	if len(cfg.Doors) > 0 {
		p.doors = knock.NewDecoder(cfg.Doors, cfg.MaxTracked)
		for _, d := range cfg.Doors {
			clients = append(clients, knock.PolicyClient(d))
		}
	}
	if f := cfg.Fwknop; f != nil {
		for _, st := range f.Stanzas {
			if st.OpenPorts == nil && st.CmdCycleOpen == "" {
				s.log.Warn("fwknop stanza has no OPEN_PORTS: it may open any port, but postern closes only the ports listed somewhere",
					"stanza", fko.StanzaName(st))
			}
			if st.GPG != nil && len(st.GPG.HMACKey) == 0 {
				s.log.Warn("fwknop GnuPG stanza without HMAC_KEY: anyone with the server's GnuPG public key can make postern run gpg "+
					"(bounded per source and in total, output capped); add an HMAC key", "stanza", fko.StanzaName(st))
			}
		}
		// Last: it starts GnuPG workers, which nothing after may leave running.
		p.fwknop = fko.NewDecoder(fko.DecoderConfig{Stanzas: f.Stanzas, MaxAge: f.MaxPacketAge, Replay: s.fwknopReplay,
			Async: s.sink, Workers: 2, Queue: 64, PerSourceRate: 2, PerSourceBurst: 4, NAT: f.NAT})
		p.routes.fwknopPort = f.Port
		clients = append(clients, fko.PolicyClients(f.Stanzas, f.NAT)...)
	}
	p.policy = policy.New(clients)
	return p, nil
}

// close stops what a pipeline runs (verification and GnuPG workers).
func (p *pipeline) close() {
	if p.spa != nil {
		p.spa.Close()
	}
	if p.fwknop != nil {
		p.fwknop.Close()
	}
}

// openState opens the state files cfg's languages need and the command
// runner (which runs overdue stop commands at once), unless already open.
func (s *Server) openState(cfg *config.Config) error {
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
	if cfg.SPAEnabled() && s.spaReplay == nil {
		if s.spaReplay, err = spa.LoadTimestamps(state(ReplayFile)); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	if len(cfg.Covert) > 0 && s.covertReplay == nil {
		if s.covertReplay, err = spa.LoadTimestamps(state(CovertReplayFile)); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	if f := cfg.Fwknop; f != nil && s.fwknopReplay == nil {
		// A packet is refused once its timestamp is max_packet_age away
		// from the clock in either direction, so a digest need not be kept
		// longer than twice that, plus a margin.
		if s.fwknopReplay, err = fko.OpenReplayCache(state(FwknopReplayFile), 2*f.MaxPacketAge+time.Minute, 1_000_000); err != nil {
			return err
		}
	}
	if needsCommands(cfg) && s.runner == nil {
		if s.runner, err = command.Open(state(PendingCommandsFile), s.log); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) newVerifier(cfg *config.Config) (*spa.Verifier, error) {
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
	limiter := ratelimit.New(5, 10, 65536)
	limiter.SetIPv6Prefix(cfg.SPA.SourcePrefix6)
	if cfg.SSH != nil && key.Public().Suite() != spa.SuiteX25519 {
		return nil, fmt.Errorf("%s: [ssh] needs a suite-1 server key: an SSH-signed knock to a post-quantum key would not fit one packet", cfg.Path)
	}
	vc := spa.VerifierConfig{Key: key, Clients: clients, MaxSkew: cfg.SPA.MaxSkew, Destinations: cfg.SPA.Destinations,
		Replay: s.spaReplay, Limiter: limiter}
	if cfg.SSH != nil {
		vc.SSH = cfg.SSH.Trust
	}
	return spa.NewVerifier(vc)
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
	rules := firewall.Rules{Protected: cfg.Protected(), Forwarded: cfg.Forwarded(), Published: cfg.Gateway.Published,
		Gateway: cfg.UsesGateway()}
	var matches []capture.Match
	closeKnock := func(ps ...port.Spec) {
		if cfg.Capture == "afpacket" {
			rules.Knock = append(rules.Knock, ps...)
		}
	}
	if cfg.SPAEnabled() {
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
	rules, matches := Rules(s.pipe.Load().cfg)
	src, err := s.openCapture(matches)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := s.fw.Setup(rules); err != nil {
		return err
	}
	// Grants the kernel kept from an earlier run whose owner this
	// configuration no longer has, or no longer allows that port, go now.
	s.prune(s.pipe.Load().policy, "start-up")
	s.warnHostPolicy(rules)
	var ctl *net.UnixListener
	if s.ControlPath != "" {
		if ctl, err = control.Listen(s.ControlPath); err != nil {
			return err
		}
		defer ctl.Close()
	}
	var metricsLn net.Listener
	if s.cfg.MetricsListen != "" {
		s.metrics.labeled("postern_build_info", "The running postern's version.",
			fmt.Sprintf("version=%q,goversion=%q", cmp.Or(s.Version, "devel"), runtime.Version()), func() float64 { return 1 })
		if metricsLn, err = s.metrics.listen(s.cfg.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen: %w", err)
		}
		defer metricsLn.Close()
	}
	if s.cfg.Knockd != nil && s.cfg.Knockd.PidFile != "" {
		link, err := writePidFile(s.cfg.Knockd.PidFile)
		if err != nil {
			return fmt.Errorf("%s: PidFile: %w", s.cfg.Knockd.Path, err)
		}
		if link {
			s.log.Warn("the knockd PidFile was a symbolic link; replaced it by the file, not written through it",
				"path", s.cfg.Knockd.PidFile)
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
	if !s.cfg.Firewall.Backend.Events() {
		audit = auditIPTables // iptables-save and ipset: a few ms each, and no events to wait for
	}
	kick := make(chan struct{}, 1)
	if ev, ok := s.fw.Backend().(interface {
		Events(context.Context, func()) error
	}); ok {
		g.Go(func() error {
			err := ev.Events(gctx, func() {
				select {
				case kick <- struct{}{}:
				default:
				}
			})
			if err != nil {
				s.log.Warn("firewall events unavailable; the audit alone keeps the rules", "err", err)
			}
			return nil
		})
	}
	g.Go(func() error { s.fw.Watch(gctx, audit, kick, nil); return nil })
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
	if ctl != nil {
		g.Go(func() error { return control.Serve(gctx, ctl, s.answer) })
	}
	if metricsLn != nil {
		g.Go(func() error { return s.metrics.serve(gctx, metricsLn, s.cfg.MetricsToken) })
	}
	if s.Hangups != nil {
		g.Go(func() error { s.reloadOnHangup(gctx); return nil })
	}
	g.Go(func() error {
		if s.afp != nil {
			return s.afp.RunWithErrors(gctx, s.handle, s.captureError)
		}
		return src.Run(gctx, s.handle)
	})

	s.logReady("ready", rules)
	Notify("READY=1")

	err = g.Wait()
	s.retired.Wait()      // pipelines a reload replaced have finished what they held
	s.pipe.Load().close() // no GnuPG verdict after this
	if s.pipe.Load().cfg.Firewall.RemoveOnExit {
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

// writePidFile writes the pid through a new file renamed into place: the
// rename replaces whatever is at path, a symbolic link included, and never
// writes through one (as root, that would write wherever it points); a
// planted link does not keep the daemon from starting.
func writePidFile(path string) (replacedLink bool, err error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSymlink != 0 {
		replacedLink = true
	}
	return replacedLink, atomicfile.Write(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
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
	s.pipe.Load().close()
	if s.runner != nil {
		s.runner.Close()
	}
	if s.fwknopReplay != nil {
		s.fwknopReplay.Close()
	}
}

// logReady writes the line that says what is in force.
func (s *Server) logReady(msg string, rules firewall.Rules) {
	cfg := s.pipe.Load().cfg
	spaPort, stanzas := any("none"), 0
	if cfg.SPAEnabled() {
		spaPort = cfg.SPA.Port
	}
	if cfg.Fwknop != nil {
		stanzas = len(cfg.Fwknop.Stanzas)
	}
	s.log.Info(msg, "capture", cfg.Capture, "interface", cfg.Interface, "spa_port", spaPort,
		"protected", port.Join(rules.Protected), "clients", len(cfg.Clients), "doors", len(cfg.Doors),
		"covert", len(cfg.Covert), "fwknop_stanzas", stanzas, "backend", cfg.Firewall.Backend)
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
	if local := s.local.Load(); local != nil {
		isLocal, known := (*local)[f.Dst]
		if !known {
			s.refuse(&policy.Verdict{Language: "capture", Src: f.Src, Reason: mNotLocal}, slog.String("dst", f.Dst.String()))
			return
		}
		f.Foreign = !isLocal
	}
	p := s.pipe.Load()
	switch f.Proto {
	case capture.ProtoUDP:
		isSPA := p.routes.spaPort != 0 && f.DstPort == p.routes.spaPort
		isFwknop := p.routes.fwknopPort != 0 && f.DstPort == p.routes.fwknopPort
		if isSPA && isFwknop {
			// postern SPA and fwknop may share a port: a postern knock is
			// binary with a fixed size and first byte, an fwknop packet is
			// base64 text.
			isSPA = spa.IsKnock(f.Payload)
			isFwknop = !isSPA
		}
		switch {
		case isSPA:
			p.spa.Decode(f, s.sink)
			return
		case isFwknop:
			p.fwknop.Decode(f, s.sink)
			return
		}
	case capture.ProtoTCP:
		if p.routes.covert[f.DstPort] {
			p.covert.Decode(f, s.sink)
			return
		}
	}
	if p.doors != nil {
		p.doors.Decode(f, s.sink)
		if p.doors.PortsChanged() {
			s.followDoorPorts(p.cfg)
		}
	}
}

// followDoorPorts re-derives the closed ports and the capture filter after
// a door's sequence changed (a one-time sequence was used).
func (s *Server) followDoorPorts(cfg *config.Config) {
	rules, matches := Rules(cfg)
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
			p := s.pipe.Load()
			if p.doors != nil {
				p.doors.Expire(now, s.sink)
			}
			if p.covert != nil {
				p.covert.Expire(now)
			}
			s.clampClocks(p.cfg, now)
			s.persistState(now)
			s.refreshLocal()
			s.alive.Store(time.Now().UnixNano())
		}
	}
}

// durable is replay state that decides from memory while its file cannot
// be written, and writes it when it can.
type durable interface {
	Unsaved() (int, error)
	Flush() error
}

// persistState writes replay state that could not be written when it was
// decided (a full or read-only disk), and says loudly, every 10 s while it
// lasts, that knocks are being decided from memory.
func (s *Server) persistState(now time.Time) {
	type store struct {
		name string
		d    durable
	}
	var stores []store
	if s.spaReplay != nil {
		stores = append(stores, store{ReplayFile, s.spaReplay})
	}
	if s.covertReplay != nil {
		stores = append(stores, store{CovertReplayFile, s.covertReplay})
	}
	if s.fwknopReplay != nil {
		stores = append(stores, store{FwknopReplayFile, s.fwknopReplay})
	}
	for _, st := range stores {
		n, _ := st.d.Unsaved()
		if n == 0 {
			continue
		}
		if err := st.d.Flush(); err != nil {
			if now.Sub(s.stateWarned) >= 10*time.Second {
				s.stateWarned = now
				s.log.Error("replay state cannot be written: knocks are decided from memory, and a crash now would "+
					"forget what was decided since (replays inside max_skew)", "file", st.name, "unsaved", n, "err", err)
			}
			continue
		}
		s.stateWarned = time.Time{}
		s.log.Info("replay state written again", "file", st.name, "decisions", n)
	}
}

// refreshLocal re-reads this host's addresses when raw capture sees
// packets for any destination. Door targets that are not this host's are
// kept too, as false: only their doors count packets sent to them.
func (s *Server) refreshLocal() {
	if s.afp == nil || s.pipe.Load().cfg.AnyDestination {
		s.local.Store(nil)
		return
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return // keep the last known set
	}
	m := make(map[netip.Addr]bool, len(addrs))
	for _, d := range s.pipe.Load().cfg.Doors {
		if d.Target.IsValid() {
			m[d.Target] = false
		}
	}
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
func (s *Server) clampClocks(cfg *config.Config, now time.Time) {
	if s.spaReplay != nil && cfg.SPAEnabled() {
		if n := s.spaReplay.ClampFuture(now.Add(cfg.SPA.MaxSkew).UnixNano()); n > 0 {
			s.log.Warn("client timestamps ahead of this clock (was it corrected?); clamped to now + max_skew",
				"clients", n, "max_skew", cfg.SPA.MaxSkew)
		}
	}
	if s.covertReplay != nil && len(cfg.Covert) > 0 {
		if n := s.covertReplay.ClampFuture(now.Add(covert.MaxSkew(cfg.Covert)).UnixNano()); n > 0 {
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

// Notify sends a state line to systemd (Type=notify), if the daemon runs
// under systemd.
func Notify(state string) {
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

// Reload puts cfg in force: it builds cfg's decoders and policy (reading
// every file it names again: keys, secrets, access.conf, knockd.conf),
// installs its rules and capture filter, then swaps it in whole. Live
// grants, replay state and pending stop commands carry over; knock
// sequences in progress start over. If anything fails, the configuration
// in force stays as it was and the error says why. Grants the new
// configuration does not allow (a client removed, a port no longer in
// its allow) are revoked at once. Some settings only
// take effect at start: restartOnly names them.
func (s *Server) Reload(cfg *config.Config) error {
	s.reloading.Lock()
	defer s.reloading.Unlock()
	if what := restartOnly(s.cfg, cfg); what != "" {
		return fmt.Errorf("%s changed: that needs a restart; the configuration in force is unchanged", what)
	}
	p, err := s.newPipeline(cfg)
	if err != nil {
		return fmt.Errorf("%w; the configuration in force is unchanged", err)
	}
	rules, matches := Rules(cfg)
	if s.afp != nil {
		if err := s.afp.Reconfigure(cfg.Interface, matches); err != nil {
			p.close()
			return fmt.Errorf("%w; the configuration in force is unchanged", err)
		}
	}
	if err := s.fw.Setup(rules); err != nil {
		p.close()
		return fmt.Errorf("%w; the configuration in force is unchanged", err)
	}
	if err := WriteSnapshot(cfg, rules); err != nil {
		s.log.Warn("could not keep the closed state for a broken configuration to fall back on", "err", err)
	}
	old := s.pipe.Swap(p)
	s.retired.Go(old.close) // its GnuPG workers finish what they hold; Run waits for them
	s.prune(p.policy, "reload")
	s.logReady("reloaded", rules)
	return nil
}

// reloadOnHangup reloads the configuration file on each hangup until ctx
// ends. A file that does not load is logged with its file:line:key and
// changes nothing.
func (s *Server) reloadOnHangup(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.Hangups:
		}
		if s.ReopenLogs != nil {
			if err := s.ReopenLogs(); err != nil {
				s.log.Error("SIGHUP: reopening the log file", "err", err)
			}
		}
		if err := s.reloadFrom(""); err != nil {
			s.log.Error("reload refused; the configuration in force is unchanged", "err", err)
		}
	}
}

// restartOnly names the first setting that differs between a and b and
// that only takes effect at start-up ("" if none).
func restartOnly(a, b *config.Config) string {
	switch {
	case a.Capture != b.Capture:
		return "capture"
	case a.StateDir != b.StateDir:
		return "state_dir"
	case a.Firewall.Backend != b.Firewall.Backend:
		return "firewall.backend"
	case a.MetricsListen != b.MetricsListen:
		return "metrics_listen"
	case a.Capture == "udp" && (a.SPA.Port != b.SPA.Port || (a.Fwknop == nil) != (b.Fwknop == nil) ||
		a.Fwknop != nil && a.Fwknop.Port != b.Fwknop.Port || a.SPAEnabled() != b.SPAEnabled()):
		return "the knock ports of capture = \"udp\""
	case (a.Knockd == nil) != (b.Knockd == nil):
		return "knockd_file"
	case a.Knockd != nil && (a.Knockd.LogFile != b.Knockd.LogFile || a.Knockd.PidFile != b.Knockd.PidFile ||
		a.Knockd.UseSyslog != b.Knockd.UseSyslog):
		return "the knockd file's LogFile, PidFile or UseSyslog"
	}
	return ""
}
