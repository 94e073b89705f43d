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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/config"
	"github.com/postern/postern/control"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/language"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
)

// Server is a configured daemon, ready to Run.
type Server struct {
	cfg     *config.Config // as started: what a reload cannot change
	log     *slog.Logger
	fw      *firewall.Keeper
	state   *state // state_dir's files and the command runner, across reloads
	metrics *Metrics
	logs    logLimiter
	sink    policy.Sink        // s.decided, made once: a method value per packet would allocate
	stopRun context.CancelFunc // ends Run (control: stop), set before the control socket opens

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

// pipeline is one configuration's languages and policy, and the route
// table that sends each frame to its language.
type pipeline struct {
	cfg    *config.Config
	policy *policy.Policy
	langs  []language.Language
	udp    map[uint16][]claimed // by destination port; two may share one (Claims decides)
	tcp    map[uint16]language.Language
	rest   []language.Language // every frame no port routes
}

// claimed is a language on a UDP port, with its claim on shared ones.
type claimed struct {
	l      language.Language
	claims func(payload []byte) bool
}

// New loads keys and state and prepares the decoders. It does not touch the
// firewall or the network: the caller installs the closed state (Rules)
// before, so that nothing New can fail on leaves a port open.
func New(cfg *config.Config, fw *firewall.Keeper, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, fw: fw, state: newState(cfg.StateDir, log)}
	s.sink = s.decided
	p, err := s.newPipeline(cfg)
	if err != nil {
		return nil, err
	}
	s.pipe.Store(p)
	// Every language's counters exist from the start: a reload may add one.
	outcomes := []outcome{{"capture", mMalformed}, {"capture", mCaptureError}, {"capture", mNotLocal}}
	for _, l := range language.All {
		outcomes = append(outcomes, outcome{l.Name, mGranted}, outcome{l.Name, mClosed}, outcome{l.Name, mNotOwned},
			outcome{l.Name, mFirewallError}, outcome{l.Name, mCommandNotRun}, outcome{l.Name, mPendingFull})
		for _, r := range l.Reasons {
			outcomes = append(outcomes, outcome{l.Name, r})
		}
		for _, r := range policy.Refusals {
			outcomes = append(outcomes, outcome{l.Name, string(r)})
		}
	}
	s.metrics = newMetrics(outcomes)
	s.metrics.gauge("postern_knock_attempts_tracked", "Knock attempts (source × door) in the state table.",
		func() float64 {
			var n uint64
			for _, l := range s.pipe.Load().langs {
				if t, ok := l.(language.Tracker); ok {
					n += t.Tracked()
				}
			}
			return float64(n)
		})
	s.metrics.counter("postern_covert_sources_evicted_total", "Covert-knock sources evicted from the full reassembly table.",
		func() float64 {
			var n uint64
			for _, l := range s.pipe.Load().langs {
				if e, ok := l.(language.Evicter); ok {
					n += e.Evictions()
				}
			}
			return float64(n)
		})
	s.metrics.counter("postern_firewall_restores_total", "Times postern's firewall rules were found missing or altered and restored.",
		func() float64 { return float64(fw.Restores()) })
	s.metrics.counter("postern_grants_consumed_total", "Counted grants (grant = \"once\", {connections = N}) whose connections were all used.",
		func() float64 { n, _, _ := fw.Lifecycle(); return float64(n) })
	s.metrics.counter("postern_grants_idle_ended_total", "Idle grants that ended idle, before their cap.",
		func() float64 { _, n, _ := fw.Lifecycle(); return float64(n) })
	s.metrics.counter("postern_grants_renewed_total", "Grants a knock found live and extended.",
		func() float64 { _, _, n := fw.Lifecycle(); return float64(n) })
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

// newPipeline opens cfg's languages (each reads its files: keys,
// secrets, access.conf) on the shared state and builds its policy and
// route table.
func (s *Server) newPipeline(cfg *config.Config) (*pipeline, error) {
	if err := s.state.check(); err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings {
		s.log.Warn("configuration: " + w)
	}
	langs, err := language.OpenAll(cfg, language.Env{State: s.state, Log: s.log, Sink: s.sink})
	if err != nil {
		return nil, err
	}
	p := &pipeline{cfg: cfg, langs: langs, udp: map[uint16][]claimed{}, tcp: map[uint16]language.Language{}}
	var clients []policy.Client
	for _, l := range langs {
		clients = append(clients, l.Clients()...)
		r := l.Routes()
		for _, u := range r.UDP {
			p.udp[u] = append(p.udp[u], claimed{l, r.Claims})
		}
		for _, t := range r.TCP {
			p.tcp[t] = l
		}
		if r.Rest {
			p.rest = append(p.rest, l)
		}
	}
	p.policy = policy.New(clients)
	return p, nil
}

// close stops what a pipeline runs (verification and GnuPG workers).
func (p *pipeline) close() {
	for _, l := range p.langs {
		l.Close()
	}
}

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Rules derives, from the configuration alone, what the firewall closes
// and what capture must pass: every language's routes, merged. It needs
// no key or state file, so the closed state can be installed before
// anything that may fail is loaded.
func Rules(cfg *config.Config) (firewall.Rules, []capture.Match) {
	rules := firewall.Rules{Protected: cfg.Protected(), Forwarded: cfg.Forwarded(), Published: cfg.Gateway.Published,
		Gateway: cfg.UsesGateway()}
	rules.Connections, rules.Idle = cfg.Lifetimes()
	var matches []capture.Match
	for _, spec := range language.Enabled(cfg) {
		r := spec.Routes(cfg)
		for _, m := range r.Capture {
			if !slices.Contains(matches, m) {
				matches = append(matches, m)
			}
		}
		for _, c := range r.Close {
			if !slices.Contains(rules.Knock, c) {
				rules.Knock = append(rules.Knock, c)
			}
		}
		for _, rg := range r.CloseRanges {
			rules.KnockRanges = append(rules.KnockRanges, firewall.PortRange{Proto: rg.Proto, Lo: rg.Lo, Hi: rg.Hi})
		}
	}
	return rules, matches
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
	ctx, s.stopRun = context.WithCancel(ctx)
	defer s.stopRun()
	defer s.closeState()
	o, err := s.open()
	defer o.close()
	if err != nil {
		return err
	}
	s.alive.Store(time.Now().UnixNano())
	s.refreshLocal()
	g, gctx := errgroup.WithContext(ctx)
	s.startTasks(gctx, g, o)
	s.logReady(MsgReady, o.rules)
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

// opened is what Run opens before its tasks start.
type opened struct {
	rules   firewall.Rules
	src     capture.Source
	ctl     *net.UnixListener
	metrics net.Listener
	pidFile string
}

func (o *opened) close() {
	if o.metrics != nil {
		o.metrics.Close()
	}
	if o.ctl != nil {
		o.ctl.Close()
	}
	if o.pidFile != "" {
		os.Remove(o.pidFile)
	}
	if o.src != nil {
		o.src.Close()
	}
}

// open opens the capture, installs the rules (and prunes the grants the
// configuration no longer allows), opens the control socket, the metrics
// endpoint and the knockd PidFile, then drops the privileges no longer
// needed. What it opened is in the result even when it fails.
func (s *Server) open() (*opened, error) {
	o := &opened{}
	rules, matches := Rules(s.pipe.Load().cfg)
	o.rules = rules
	var err error
	if o.src, err = s.openCapture(matches); err != nil {
		return o, err
	}
	if err := s.fw.Setup(rules); err != nil {
		return o, err
	}
	// Grants the kernel kept from an earlier run whose owner this
	// configuration no longer has, or no longer allows that port, go now.
	s.prune(s.pipe.Load().policy, "start-up")
	s.warnHostPolicy(rules)
	if s.ControlPath != "" {
		if o.ctl, err = control.Listen(s.ControlPath); err != nil {
			return o, err
		}
	}
	if s.cfg.MetricsListen != "" {
		s.metrics.labeled("postern_build_info", "The running postern's version.",
			fmt.Sprintf("version=%q,goversion=%q", cmp.Or(s.Version, "devel"), runtime.Version()), func() float64 { return 1 })
		if o.metrics, err = s.metrics.listen(s.cfg.MetricsListen); err != nil {
			return o, fmt.Errorf("metrics_listen: %w", err)
		}
	}
	if s.cfg.Knockd != nil && s.cfg.Knockd.PidFile != "" {
		link, err := writePidFile(s.cfg.Knockd.PidFile)
		if err != nil {
			return o, fmt.Errorf("%s: PidFile: %w", s.cfg.Knockd.Path, err)
		}
		o.pidFile = s.cfg.Knockd.PidFile
		if link {
			s.log.Warn("the knockd PidFile was a symbolic link; replaced it by the file, not written through it",
				"path", s.cfg.Knockd.PidFile)
		}
	}
	// Sockets, listeners and files are open: keep only what the daemon
	// needs from here on (not in tests that inject a capture source).
	if s.Source == nil {
		if dropped, err := privilegesFor(s.cfg).drop(); err != nil {
			return o, fmt.Errorf("dropping privileges: %w", err)
		} else if dropped {
			s.log.Debug("dropped privileges")
		}
	}
	return o, nil
}

// startTasks starts Run's goroutines, all in g: nothing outlives Run.
func (s *Server) startTasks(ctx context.Context, g *errgroup.Group, o *opened) {
	g.Go(func() error { s.expireLoop(ctx); return nil })
	audit := auditEvery
	if !s.cfg.Firewall.Backend.Events() {
		audit = auditIPTables // iptables-save and ipset: a few ms each, and no events to wait for
	}
	kick := make(chan struct{}, 1)
	if ev, ok := s.fw.Backend().(interface {
		Events(context.Context, func()) error
	}); ok {
		g.Go(func() error {
			err := ev.Events(ctx, func() {
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
	g.Go(func() error { s.fw.Watch(ctx, audit, kick, nil); return nil })
	if s.afp != nil {
		g.Go(func() error {
			return s.afp.Watch(ctx, interfaceEvery, func(name string, index int) {
				if index == 0 {
					s.log.Warn("interface gone; waiting for it", "interface", name)
				} else {
					s.log.Info("interface up; capturing", "interface", name, "index", index)
				}
			})
		})
	}
	g.Go(func() error { return s.watchdog(ctx) })
	if o.ctl != nil {
		g.Go(func() error { return control.Serve(ctx, o.ctl, s.answer) })
	}
	if o.metrics != nil {
		g.Go(func() error { return s.metrics.serve(ctx, o.metrics, s.cfg.MetricsToken) })
	}
	if s.Hangups != nil {
		g.Go(func() error { s.reloadOnHangup(ctx); return nil })
	}
	g.Go(func() error {
		if s.afp != nil {
			return s.afp.RunWithErrors(ctx, s.handle, s.captureError)
		}
		return o.src.Run(ctx, s.handle)
	})
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
	s.state.close()
}

// logReady writes the line that says what is in force.
func (s *Server) logReady(msg string, rules firewall.Rules) {
	cfg := s.pipe.Load().cfg
	spaPort, stanzas := any("none"), 0
	if cfg.SPAEnabled() {
		spaPort = cfg.SPA.Port
	}
	args := []any{"capture", cfg.Capture, "interface", cfg.Interface, "spa_port", spaPort}
	if cfg.Fwknop != nil {
		stanzas = len(cfg.Fwknop.Stanzas)
		args = append(args, "fwknop_port", cfg.Fwknop.Port) // where fwknop clients knock, which spa_port is not
	}
	args = append(args, "protected", port.Join(rules.Protected), "clients", len(cfg.Clients), "doors", len(cfg.Doors),
		"covert", len(cfg.Covert), "fwknop_stanzas", stanzas, "backend", cfg.Firewall.Backend)
	s.log.Info(msg, args...)
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
		if ls := p.udp[f.DstPort]; len(ls) > 0 {
			claimant(ls, f.Payload).Decode(f, s.sink)
			return
		}
	case capture.ProtoTCP:
		if l := p.tcp[f.DstPort]; l != nil {
			l.Decode(f, s.sink)
			return
		}
	}
	for _, l := range p.rest {
		l.Decode(f, s.sink)
		if c, ok := l.(language.PortChanger); ok && c.PortsChanged() {
			s.followDoorPorts(p.cfg)
		}
	}
}

// claimant is the language of a UDP port that takes payload: alone on the
// port, whatever the payload; shared (postern SPA and fwknop may use one
// port), the one whose Claims says so, else the one that takes the rest.
func claimant(ls []claimed, payload []byte) language.Language {
	if len(ls) == 1 {
		return ls[0].l
	}
	rest := ls[0].l
	for _, c := range ls {
		switch {
		case c.claims == nil:
			rest = c.l
		case c.claims(payload):
			return c.l
		}
	}
	return rest
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

// expireLoop ticks every language (timed-out knock attempts, stale covert
// SYNs, clocks clamped) and writes replay state a full disk held back.
// Each tick also tells the watchdog that the daemon is not wedged.
func (s *Server) expireLoop(ctx context.Context) {
	t := time.NewTicker(expireEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, l := range s.pipe.Load().langs {
				l.Tick(now, s.sink)
			}
			s.persistState(now)
			s.refreshLocal()
			s.alive.Store(time.Now().UnixNano())
		}
	}
}

// persistState writes replay state that could not be written when it was
// decided (a full or read-only disk), and says loudly, every 10 s while it
// lasts, that knocks are being decided from memory.
func (s *Server) persistState(now time.Time) {
	for name, d := range s.state.stores() {
		n, _ := d.Unsaved()
		if n == 0 {
			continue
		}
		if err := d.Flush(); err != nil {
			if now.Sub(s.stateWarned) >= 10*time.Second {
				s.stateWarned = now
				s.log.Error("replay state cannot be written: knocks are decided from memory, and a crash now would "+
					"forget what was decided since (replays inside max_skew)", "file", name, "unsaved", n, "err", err)
			}
			continue
		}
		s.stateWarned = time.Time{}
		s.log.Info("replay state written again", "file", name, "decisions", n)
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
	s.logReady(MsgReloaded, rules)
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
