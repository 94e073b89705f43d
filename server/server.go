// Package server is the daemon: it wires capture → decode → policy →
// firewall, writes one log line per decision and keeps the counters. It owns
// no protocol logic of its own.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"postern/capture"
	"postern/config"
	"postern/firewall"
	"postern/policy"
	"postern/port"
	"postern/spa"
)

// ReplayFile is the name of the SPA replay state inside state_dir.
const ReplayFile = "spa-timestamps"

// Server is a configured daemon, ready to Run.
type Server struct {
	cfg      *config.Config
	log      *slog.Logger
	fw       firewall.Backend
	verifier *spa.Verifier
	policy   *policy.Policy
	metrics  *Metrics
	logs     logLimiter
	knock    spa.Knock // scratch, reused for every packet
}

// New loads the key and the replay state and prepares the pipeline. It does
// not touch the firewall or the network.
func New(cfg *config.Config, fw firewall.Backend, log *slog.Logger) (*Server, error) {
	text, err := spa.ReadPrivateKeyFile(cfg.PrivateKeyFile)
	if err != nil {
		return nil, fmt.Errorf("private_key_file: %w", err)
	}
	key, err := spa.ParseServerPrivateKey(text)
	if err != nil {
		return nil, fmt.Errorf("private_key_file %s: %w", cfg.PrivateKeyFile, err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	replay, err := spa.LoadTimestamps(filepath.Join(cfg.StateDir, ReplayFile))
	if err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	clients := make(map[spa.ClientPublicKey]string, len(cfg.Clients))
	pol := make([]policy.Client, 0, len(cfg.Clients))
	for _, c := range cfg.Clients {
		clients[c.PublicKey] = c.Name
		pol = append(pol, policy.Client{Name: c.Name, Allow: c.Allow, MaxDuration: c.MaxDuration,
			DefaultDuration: c.DefaultDuration, AllowSource: c.AllowSource})
	}
	v, err := spa.NewVerifier(spa.VerifierConfig{
		Key: key, Clients: clients, MaxSkew: cfg.SPA.MaxSkew, Destinations: cfg.SPA.Destinations,
		Replay: replay,
		// Five knocks a second with bursts of ten per source is far above
		// what a person does and far below what costs the CPU anything.
		Limiter: spa.NewRateLimiter(5, 10, 65536),
	})
	if err != nil {
		return nil, err
	}
	var reasons []string
	for _, r := range spa.AllReasons() {
		if r != spa.Accepted {
			reasons = append(reasons, r.String())
		}
	}
	for _, r := range policy.Refusals {
		reasons = append(reasons, string(r))
	}
	return &Server{cfg: cfg, log: log, fw: fw, verifier: v, policy: policy.New(pol), metrics: newMetrics(reasons)}, nil
}

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Run opens the capture, installs the firewall rules, reports readiness and
// handles knocks until ctx ends. Capture opens first: if it cannot, the
// firewall is left as it was.
func (s *Server) Run(ctx context.Context) error {
	knockPort := port.Spec{Proto: port.UDP, Num: s.cfg.SPA.Port}
	var src capture.Source
	rules := firewall.Rules{Protected: s.cfg.Protected()}
	switch s.cfg.Capture {
	case "udp":
		u, err := capture.ListenUDP(s.cfg.SPA.Port)
		if err != nil {
			return err
		}
		src = u
	default:
		a, err := capture.OpenAFPacket(s.cfg.Interface, capture.PortMatches([]port.Spec{knockPort}))
		if err != nil {
			return err
		}
		src = a
		rules.Knock = []port.Spec{knockPort}
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
	s.log.Info("ready", "capture", s.cfg.Capture, "interface", s.cfg.Interface, "spa_port", s.cfg.SPA.Port,
		"protected", port.Join(rules.Protected), "clients", len(s.cfg.Clients), "backend", s.cfg.Firewall.Backend)
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

// handle decides one packet. It runs on the capture goroutine, never
// concurrently.
func (s *Server) handle(f *capture.Frame, perr error) {
	if perr != nil {
		s.refuse(f.Src, "", mMalformed, slog.String("detail", perr.Error()))
		return
	}
	k := &s.knock
	if r := s.verifier.Verify(f.Src, f.Dst, f.Payload, f.Time, k); r != spa.Accepted {
		s.refuse(f.Src, "", r.String())
		return
	}
	req := policy.Request{
		Client: s.verifier.ClientName(k.Client), Src: f.Src, UseSource: k.UseSource, Allow: k.Allow,
		Ports: k.Ports, Duration: k.Duration, Action: k.Action,
	}
	grants, refusal := s.policy.Decide(&req)
	if refusal != "" {
		s.refuse(f.Src, req.Client, string(refusal), slog.String("ports", port.Join(k.Ports)),
			slog.Duration("duration", k.Duration))
		return
	}
	if err := s.fw.Grant(grants); err != nil {
		s.metrics.inc(mFirewallError)
		s.log.Error("grant failed", "src", f.Src, "client", req.Client, "err", err)
		return
	}
	s.metrics.inc(mGranted)
	s.log.Info("granted", "src", f.Src, "client", req.Client, "allow", grants[0].Addr,
		"ports", port.Join(k.Ports), "duration", grants[0].Timeout)
}

// refuse counts a refusal and logs it, unless this reason is flooding.
func (s *Server) refuse(src netip.Addr, client, reason string, attrs ...slog.Attr) {
	s.metrics.inc(reason)
	ok, suppressed := s.logs.allow(reason, time.Now())
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

func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
