package language

import (
	"cmp"
	"fmt"
	"runtime"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/config"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/ratelimit"
	"github.com/postern/postern/replay"
	"github.com/postern/postern/spa"
)

// SPAReplayFile holds postern SPA clients' last timestamps, in state_dir.
const SPAReplayFile = "spa-timestamps"

var spaSpec = Spec{
	Name:    policy.SPA,
	Enabled: func(cfg *config.Config) bool { return cfg.SPAEnabled() },
	Routes: func(cfg *config.Config) Routes {
		knock := port.Spec{Proto: port.UDP, Num: cfg.SPA.Port}
		r := Routes{Capture: capture.PortMatches([]port.Spec{knock}), UDP: []uint16{knock.Num}, Claims: spa.IsKnock}
		if cfg.Capture == "afpacket" {
			r.Close = []port.Spec{knock} // with capture = "udp" the knock must reach the socket
		}
		return r
	},
	Reasons: spaReasons(),
	Open:    openSPA,
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

// spaLang is postern SPA: knocks verified on workers, one per core.
type spaLang struct {
	cfg    *config.Config
	env    Env
	dec    *spa.Decoder
	replay replay.Store
}

func openSPA(cfg *config.Config, env Env) (Language, error) {
	replay, err := env.State.Timestamps(SPAReplayFile)
	if err != nil {
		return nil, err
	}
	v, err := newVerifier(cfg, replay)
	if err != nil {
		return nil, err
	}
	return &spaLang{cfg: cfg, env: env, replay: replay,
		dec: spa.NewParallelDecoder(v, cmp.Or(cfg.SPA.Workers, runtime.GOMAXPROCS(0)), env.Sink)}, nil
}

func newVerifier(cfg *config.Config, store replay.Store) (*spa.Verifier, error) {
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
		Replay: store, Limiter: limiter}
	if cfg.SSH != nil {
		vc.SSH = cfg.SSH.Trust
	}
	return spa.NewVerifier(vc)
}

func (l *spaLang) Name() policy.Language { return policy.SPA }
func (l *spaLang) Reasons() []string     { return spaSpec.Reasons }
func (l *spaLang) Routes() Routes        { return spaSpec.Routes(l.cfg) }

func (l *spaLang) Clients() []policy.Client {
	var out []policy.Client
	for _, c := range l.cfg.Clients {
		out = append(out, policy.Client{Language: policy.SPA, Name: c.Name, Allow: c.Allow,
			MaxDuration: c.MaxDuration, DefaultDuration: c.DefaultDuration, AllowSource: c.AllowSource, Forward: c.Forward,
			Lifetime: c.Lifetime})
	}
	if l.cfg.SSH != nil {
		for _, id := range l.cfg.SSH.Identities {
			out = append(out, policy.Client{Language: policy.SPA, Name: id.Name, Allow: id.Allow,
				MaxDuration: id.MaxDuration, DefaultDuration: id.DefaultDuration, AllowSource: id.AllowSource,
				Lifetime: id.Lifetime})
		}
	}
	return out
}

func (l *spaLang) Decode(f *capture.Frame, emit policy.Sink) { l.dec.Decode(f, emit) }

// Tick lowers stored client timestamps that lie beyond the freshness
// window: after a clock that ran ahead is corrected, no client stays
// locked out as "replay" for longer than max_skew.
func (l *spaLang) Tick(now time.Time, _ policy.Sink) {
	if n := l.replay.ClampFuture(now.Add(l.cfg.SPA.MaxSkew).UnixNano()); n > 0 {
		l.env.Log.Warn("client timestamps ahead of this clock (was it corrected?); clamped to now + max_skew",
			"clients", n, "max_skew", l.cfg.SPA.MaxSkew)
	}
}

func (l *spaLang) Close() { l.dec.Close() }
