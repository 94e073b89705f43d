package language

import (
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/config"
	"github.com/postern/postern/covert"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/replay"
)

// CovertReplayFile holds covert clients' last timestamps, in state_dir.
const CovertReplayFile = "covert-timestamps"

var coverSpec = Spec{
	Name:    policy.Covert,
	Enabled: func(cfg *config.Config) bool { return len(cfg.Covert) > 0 },
	Routes: func(cfg *config.Config) Routes {
		ps := covert.Ports(cfg.Covert)
		// The covert ports are closed whatever the capture: the SYNs must
		// never be answered.
		r := Routes{Capture: capture.PortMatches(ps), Close: ps}
		for _, p := range ps {
			r.TCP = append(r.TCP, p.Num)
		}
		return r
	},
	Reasons: covert.Reasons,
	Open: func(cfg *config.Config, env Env) (Language, error) {
		replay, err := env.State.Timestamps(CovertReplayFile)
		if err != nil {
			return nil, err
		}
		d, err := covert.NewDecoder(cfg.Covert, replay)
		if err != nil {
			return nil, err
		}
		return &covertLang{cfg: cfg, env: env, dec: d, replay: replay}, nil
	},
}

// covertLang is covert knocks: two SYNs paired per source.
type covertLang struct {
	cfg    *config.Config
	env    Env
	dec    *covert.Decoder
	replay replay.Store
}

func (l *covertLang) Name() policy.Language                     { return policy.Covert }
func (l *covertLang) Reasons() []string                         { return covert.Reasons }
func (l *covertLang) Routes() Routes                            { return coverSpec.Routes(l.cfg) }
func (l *covertLang) Clients() []policy.Client                  { return covert.PolicyClients(l.cfg.Covert) }
func (l *covertLang) Decode(f *capture.Frame, emit policy.Sink) { l.dec.Decode(f, emit) }
func (l *covertLang) Evictions() uint64                         { return l.dec.Evictions() }
func (l *covertLang) Close()                                    {}

// Tick drops SYNs whose partner did not come in time and clamps clocks
// that ran ahead.
func (l *covertLang) Tick(now time.Time, _ policy.Sink) {
	l.dec.Expire(now)
	if n := l.replay.ClampFuture(now.Add(covert.MaxSkew(l.cfg.Covert)).UnixNano()); n > 0 {
		l.env.Log.Warn("covert client timestamps ahead of this clock; clamped", "clients", n)
	}
}
