package server

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"postern/capture"
	"postern/policy"
	"postern/port"
	"postern/spa"
)

// ReplayFile is the name of the SPA replay state inside state_dir.
const ReplayFile = "spa-timestamps"

// Metric names; refusal reasons are added by name.
const (
	mGranted       = "granted"
	mMalformed     = "malformed packet"
	mFirewallError = "firewall error"
	mCaptureError  = "capture error"
)

func spaMetricNames() []string {
	names := []string{mGranted}
	for _, r := range spa.AllReasons() {
		if r != spa.Accepted {
			names = append(names, r.String())
		}
	}
	for _, r := range policy.Refusals {
		names = append(names, string(r))
	}
	return names
}

// spaHandler checks postern SPA knocks and grants what policy allows.
type spaHandler struct {
	s        *Server
	replay   *spa.Timestamps
	verifier *spa.Verifier
	policy   *policy.Policy
	knock    spa.Knock // scratch, reused for every packet
}

func newSPAHandler(s *Server) (*spaHandler, error) {
	cfg := s.cfg
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
	return &spaHandler{s: s, replay: replay, verifier: v, policy: policy.New(pol)}, nil
}

func (h *spaHandler) handle(f *capture.Frame) {
	s, k := h.s, &h.knock
	if r := h.verifier.Verify(f.Src, f.Dst, f.Payload, f.Time, k); r != spa.Accepted {
		s.refuse(f.Src, "", r.String())
		return
	}
	req := policy.Request{
		Client: h.verifier.ClientName(k.Client), Src: f.Src, UseSource: k.UseSource, Allow: k.Allow,
		Ports: k.Ports, Duration: k.Duration, Action: k.Action,
	}
	grants, refusal := h.policy.Decide(&req)
	if refusal != "" {
		s.refuse(f.Src, req.Client, string(refusal), slog.String("ports", port.Join(k.Ports)),
			slog.Duration("duration", k.Duration))
		return
	}
	if !s.grant(grants, f.Src, req.Client) {
		return
	}
	s.metrics.inc(mGranted)
	s.log.Info("granted", "src", f.Src, "client", req.Client, "allow", grants[0].Addr,
		"ports", port.Join(k.Ports), "duration", grants[0].Timeout)
}
