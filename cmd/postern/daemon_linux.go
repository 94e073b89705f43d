package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/config"
	"github.com/postern/postern/control"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/firewall/mode"
	"github.com/postern/postern/internal/pidlock"
	"github.com/postern/postern/port"
	"github.com/postern/postern/server"
)

// The daemon's side: the server, the firewall and the daemon's pid lock
// are Linux's (AF_PACKET, nftables, iptables). Other systems build the
// client only; daemon_other.go says so.

type namedBackend struct {
	name mode.Mode
	fw   firewall.Backend
}

// installedBackends returns the kernel backends whose programs or netlink
// are available here, for status and cleanup, which need no configuration.
func installedBackends() []namedBackend {
	var out []namedBackend
	if nft, err := firewall.OpenNFTables(); err == nil {
		out = append(out, namedBackend{mode.NFTables, nft})
	}
	if _, err := exec.LookPath("ipset"); err == nil {
		if _, err := exec.LookPath("iptables"); err == nil {
			out = append(out, namedBackend{mode.IPTables, firewall.NewIPTables(nil)})
		}
	}
	return out
}

func serve(path string, debug bool, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		// A configuration that cannot be read never leaves the host more
		// open than the last good run did: serve its closed state until
		// the file is fixed and reloaded.
		if cfg, err = serveClosed(path, err, stderr); cfg == nil {
			return err
		}
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	logs, err := server.NewLogger(cfg, stderr, level)
	if err != nil {
		return err
	}
	defer logs.Close()
	log := logs.Logger
	lock, err := pidlock.Acquire()
	if err != nil {
		return err
	}
	defer lock.Release()
	// Closed before anything can fail: from here on, whatever goes wrong
	// (a key, a state file, capture), the protected ports stay dropped.
	fw, err := closeFirewall(cfg, log)
	if err != nil {
		return err
	}
	defer fw.Close()
	s, err := server.New(cfg, fw, log)
	if s != nil && err == nil {
		s.Version = versionString()
		if s.ControlPath, err = control.Path(); err != nil {
			return err
		}
	}
	if err != nil {
		return fmt.Errorf("%w\n(the firewall stays closed: protected ports %s are dropped for everyone until postern runs)",
			err, port.Join(cfg.Protected()))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP reloads the configuration (as knockd and fwknopd do) and
	// reopens the knockd LogFile (logrotate): a task of Run's. One that
	// comes once Run is over (systemctl reload during a stop) is ignored,
	// never the default action that would kill the daemon mid-exit.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Ignore(syscall.SIGHUP)
	s.Hangups, s.ReopenLogs = hup, logs.Reopen
	if err := s.Run(ctx); err != nil {
		return fmt.Errorf("%w\n(the firewall stays closed: protected ports %s are dropped for everyone until postern runs)",
			err, port.Join(cfg.Protected()))
	}
	log.Info(server.MsgStopped)
	return nil
}

// closeFirewall opens the configured backend and installs the closed state:
// protected and knock ports dropped, live grants kept. The closed state
// is kept as the snapshot a broken configuration falls back on.
func closeFirewall(cfg *config.Config, log *slog.Logger) (*firewall.Keeper, error) {
	b, err := firewall.New(cfg.Firewall.Backend)
	if err != nil {
		return nil, err
	}
	fw := firewall.NewKeeper(b, log)
	rules, _ := server.Rules(cfg)
	if err := fw.Setup(rules); err != nil {
		fw.Close()
		return nil, err
	}
	if err := server.WriteSnapshot(cfg, rules); err != nil && log != nil {
		log.Warn("could not keep the closed state for a broken configuration to fall back on", "err", err)
	}
	if cfg.Firewall.Backend.Kernel() {
		// A restore cuts the connections that slipped in while the rules
		// were gone, told apart by when they began.
		if err := firewall.EnableConntrackTimestamps(); err != nil && log != nil {
			log.Warn("conntrack timestamps are off and cannot be turned on here (run postern setup first, "+
				"or set net.netfilter.nf_conntrack_timestamp=1): connections made while the firewall was "+
				"flushed survive its restore", "err", err)
		}
		fw.SetSweeper(firewall.SweepConntrack)
		fw.SetUsed(firewall.ConntrackUsed)
	}
	return fw, nil
}

// closeFromSnapshot installs the closed state of the last good run, for a
// configuration at path that cannot be read.
func closeFromSnapshot(path string, log *slog.Logger) (*firewall.Keeper, *server.Snapshot, string, error) {
	snap, file, err := server.ReadSnapshot(server.StateDirOf(path, fallbackStateDir))
	if err != nil {
		return nil, nil, file, err
	}
	b, err := firewall.New(snap.Backend)
	if err != nil {
		return nil, nil, file, err
	}
	fw := firewall.NewKeeper(b, log)
	if err := fw.Setup(snap.Rules); err != nil {
		fw.Close()
		return nil, nil, file, err
	}
	return fw, snap, file, nil
}

// serveClosed holds the last good run's closed state (restored if
// flushed) and serves no knocks while the configuration at path cannot be
// read. SIGHUP reads it again: once it is good, serveClosed returns it and
// the daemon starts; SIGTERM ends it with cause.
func serveClosed(path string, cause error, stderr io.Writer) (*config.Config, error) {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	lock, err := pidlock.Acquire()
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	fw, snap, file, err := closeFromSnapshot(path, log)
	if err != nil {
		log.Error("configuration unreadable and no closed state of a good run to install", "err", cause, "snapshot", err)
		return nil, fmt.Errorf("%w\n(no closed state of a good run to fall back on: %v)", cause, err)
	}
	defer fw.Close()
	log.Error("configuration unreadable: holding the closed state of the last good run, serving no knocks; "+
		"fix the file and reload", "err", cause, "snapshot", file, "protected", snap.Protected, "backend", snap.Backend)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	watch, stopWatch := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { fw.Watch(watch, 250*time.Millisecond, nil, nil); close(done) }()
	defer func() { stopWatch(); <-done }()
	server.Notify("READY=1")
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w\n(stopped; the closed state of the last good run stays installed)", cause)
		case <-hup:
			cfg, err := config.Load(path)
			if err != nil {
				log.Error("reload: configuration still unreadable; the closed state stays", "err", err)
				continue
			}
			log.Info("configuration readable again; starting", "config", path)
			return cfg, nil
		}
	}
}

// reloadCmd checks the configuration, then asks the daemon over the
// control socket to reload it and reports the daemon's verdict: a file
// that does not validate is reported here and never reaches it, and the
// exit status says whether the daemon applied it.
func reloadCmd(path string, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	resp, err := control.Call(control.Request{Op: control.OpReload, Config: cfg.Path})
	if errors.Is(err, control.ErrNoDaemon) {
		return errors.New("no postern daemon runs in this network namespace")
	}
	if err != nil {
		return fmt.Errorf("the daemon refused the reload; the configuration in force is unchanged: %w", err)
	}
	fmt.Fprintf(stdout, "%s: the daemon (pid %d) reloaded it\n", cfg.Path, resp.PID)
	return nil
}

// setupCmd installs the closed state only, for an ExecStartPre= or an early
// boot unit: the protected ports are dropped even if the daemon never runs.
func setupCmd(path string, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		fw, snap, file, serr := closeFromSnapshot(path, nil)
		if serr != nil {
			return fmt.Errorf("%w\n(nothing installed: no closed state of a good run to fall back on: %v)", err, serr)
		}
		fw.Close()
		return fmt.Errorf("%w\n(installed the closed state of the last good run instead, from %s: protected %s, backend %s)",
			err, file, snap.Protected, snap.Backend)
	}
	fw, err := closeFirewall(cfg, nil)
	if err != nil {
		return err
	}
	fw.Close()
	fmt.Fprintf(stdout, "closed: protected %s (backend %s); grants need the daemon\n",
		port.Join(cfg.Protected()), cfg.Firewall.Backend)
	return nil
}

// daemonState says whether a daemon runs in this network namespace.
func daemonState() string {
	switch pid, err := pidlock.Running(); {
	case err != nil:
		return "unknown (" + err.Error() + ")"
	case pid == 0:
		return "not running"
	case pid < 0:
		return "running"
	default:
		return fmt.Sprintf("running (pid %d)", pid)
	}
}

type statusGrant struct {
	Address   string  `json:"address"`
	Port      string  `json:"port"`
	Name      string  `json:"name,omitempty"`
	To        string  `json:"to,omitempty"`   // a gateway grant: where it leads, how translated
	Mode      string  `json:"mode,omitempty"` // once, idle …: how it ends besides its time
	ExpiresIn float64 `json:"expires_in_seconds"`
	Backend   string  `json:"backend"`
}

type statusReport struct {
	Daemon    string        `json:"daemon"`
	Installed []string      `json:"installed"` // backends with postern's rules in place
	Protected []string      `json:"protected"`
	Grants    []statusGrant `json:"grants"`
}

func status(asJSON bool, stdout io.Writer) error {
	rep := statusReport{Daemon: daemonState(), Installed: []string{}, Protected: []string{}, Grants: []statusGrant{}}
	// The daemon's ledger is the authority on grants when a daemon runs;
	// without one, the kernel's sets are all there is.
	resp, cerr := control.Call(control.Request{Op: control.OpStatus})
	fromDaemon := cerr == nil
	if cerr != nil && !errors.Is(cerr, control.ErrNoDaemon) {
		return cerr
	}
	for _, g := range resp.Grants {
		rep.Grants = append(rep.Grants, statusGrant{Address: g.Address, Port: g.Port, Name: g.Name, To: g.To, Mode: g.Mode,
			ExpiresIn: g.ExpiresIn, Backend: resp.Backend})
	}
	for _, b := range installedBackends() {
		protected, ok, err := b.fw.Installed()
		if err == nil && ok {
			rep.Installed = append(rep.Installed, string(b.name))
			for _, p := range protected {
				if s := p.String(); !slices.Contains(rep.Protected, s) {
					rep.Protected = append(rep.Protected, s)
				}
			}
		}
		if fromDaemon {
			b.fw.Close()
			if err != nil {
				return err // it names its backend
			}
			continue
		}
		gs, lerr := b.fw.List()
		b.fw.Close()
		if err = cmp.Or(err, lerr); err != nil {
			return err // it names its backend
		}
		for _, g := range gs {
			rep.Grants = append(rep.Grants, statusGrant{Address: g.Addr.String(), Port: g.Port.String(), Name: g.Name,
				To: g.Destination(), Mode: g.Mode(), ExpiresIn: g.Timeout.Round(time.Millisecond).Seconds(), Backend: string(b.name)})
		}
	}
	slices.SortFunc(rep.Grants, func(a, b statusGrant) int { return cmp.Compare(a.ExpiresIn, b.ExpiresIn) })
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "daemon: %s\n", rep.Daemon)
	if len(rep.Installed) == 0 {
		fmt.Fprintln(stdout, "firewall: nothing of postern's installed (no table inet postern, no chain POSTERN): nothing is protected")
		return nil
	}
	fmt.Fprintf(stdout, "firewall: %s; protected %s\n", strings.Join(rep.Installed, ", "), strings.Join(rep.Protected, ","))
	if len(rep.Grants) == 0 {
		fmt.Fprintln(stdout, "no live grants")
		return nil
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ADDRESS\tPORT\tTO\tNAME\tMODE\tEXPIRES IN\tBACKEND")
	for _, g := range rep.Grants {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", g.Address, g.Port, cmp.Or(g.To, "this host"), cmp.Or(g.Name, "-"),
			cmp.Or(g.Mode, "-"), time.Duration(g.ExpiresIn*float64(time.Second)).Round(time.Second), g.Backend)
	}
	return w.Flush()
}

func cleanup(force bool, stdout io.Writer) error {
	backends := installedBackends()
	defer func() {
		for _, b := range backends {
			b.fw.Close()
		}
	}()
	var opens []string
	for _, b := range backends {
		if ps, ok, err := b.fw.Installed(); err == nil && ok {
			opens = append(opens, string(b.name)+": "+cmp.Or(port.Join(ps), "no protected port"))
		}
	}
	if state := daemonState(); strings.HasPrefix(state, "running") {
		if !force {
			return fmt.Errorf("a postern daemon is %s in this network namespace; stop it first, or use --force "+
				"(it would open to everyone: %s)", state, cmp.Or(strings.Join(opens, "; "), "nothing"))
		}
		// A running daemon would put its rules straight back: it stops
		// first, saying in its log who asked.
		if err := stopDaemon("postern cleanup --force"); err != nil {
			return err
		}
	}
	// Whatever backend ran, all of postern's rules go: table inet postern,
	// chain POSTERN and the postern4/postern6 sets.
	var errs []error
	for _, b := range backends {
		errs = append(errs, b.fw.Cleanup())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(opens) == 0 {
		fmt.Fprintln(stdout, "nothing of postern's was installed")
		return nil
	}
	fmt.Fprintf(stdout, "removed table inet %s, chain %s and sets %s/%s where present; now open to everyone: %s\n",
		firewall.TableName, firewall.IPTablesChain, firewall.IPSet4, firewall.IPSet6, strings.Join(opens, "; "))
	return nil
}

// stopDaemon has the daemon of this network namespace stop and waits
// until it has.
func stopDaemon(by string) error {
	if _, err := control.Call(control.Request{Op: control.OpStop, By: by}); err != nil {
		return fmt.Errorf("stopping the daemon: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.HasPrefix(daemonState(), "running") {
		if time.Now().After(deadline) {
			return errors.New("the daemon was asked to stop and is still running after 10s; nothing was removed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// revokeCmd closes live grants now, whichever backend holds them.
func revokeCmd(pos []string, stdout io.Writer) error {
	addr, err := netip.ParseAddr(pos[0])
	if err != nil {
		return errUsage{fmt.Errorf("%q is not an address", pos[0])}
	}
	var only *port.Spec
	if len(pos) == 2 {
		p, err := port.Parse(pos[1])
		if err != nil {
			return errUsage{err}
		}
		only = &p
	}
	// With a daemon running, it revokes through its ledger (and logs it),
	// so that no restore of its brings the grant back.
	resp, err := control.Call(control.Request{Op: control.OpRevoke, Addr: addr.String(), Port: strings.Join(pos[1:], "")})
	if err == nil {
		for _, g := range resp.Grants {
			fmt.Fprintf(stdout, "revoked %s %s%s (%s, %s)\n", g.Address, g.Port, strings.TrimSuffix(" to "+g.To, " to "),
				cmp.Or(g.Name, "-"), resp.Backend)
		}
		return nil
	}
	if !errors.Is(err, control.ErrNoDaemon) {
		return err
	}
	revoked := 0
	for _, b := range installedBackends() {
		gs, err := b.fw.List()
		if err != nil {
			b.fw.Close()
			return err // it names its backend
		}
		var mine []firewall.Grant
		for _, g := range gs {
			if g.Addr == addr.Unmap() && (only == nil || g.Port == *only) {
				mine = append(mine, g)
			}
		}
		if len(mine) > 0 {
			if err := b.fw.Revoke(mine); err != nil {
				b.fw.Close()
				return err // it names its backend
			}
			for _, g := range mine {
				fmt.Fprintf(stdout, "revoked %s %s%s (%s, %s)\n", g.Addr, g.Port,
					strings.TrimSuffix(" to "+g.Destination(), " to "), cmp.Or(g.Name, "-"), b.name)
			}
			revoked += len(mine)
		}
		b.fw.Close()
	}
	if revoked == 0 {
		return fmt.Errorf("no live grant for %s", pos[0]+strings.TrimSuffix(" "+strings.Join(pos[1:], ""), " "))
	}
	return nil
}
