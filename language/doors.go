package language

import (
	"slices"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/config"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
)

var doorSpec = Spec{
	Name:     policy.Door,
	Enabled:  func(cfg *config.Config) bool { return len(cfg.Doors) > 0 },
	Routes:   doorRoutes,
	Commands: doorCommands,
	Reasons:  knock.Reasons,
	Open: func(cfg *config.Config, env Env) (Language, error) {
		if doorCommands(cfg) {
			// Opened now: overdue stop commands run at once.
			if _, err := env.State.Runner(); err != nil {
				return nil, err
			}
		}
		return &doorLang{cfg: cfg, dec: knock.NewDecoder(cfg.Doors, cfg.MaxTracked)}, nil
	},
}

func doorCommands(cfg *config.Config) bool {
	return slices.ContainsFunc(cfg.Doors, func(d *knock.Door) bool { return knock.PolicyClient(d).Commands })
}

// doorRoutes: what capture must pass for doors, which ports postern closes
// (the sequences of [[door]]s; knockd_file doors are only listened to, as
// knockd does) and the closed ranges of rotating doors. Doors take every
// frame no other language's port routes.
func doorRoutes(cfg *config.Config) Routes {
	r := Routes{Rest: true}
	var fromKnockd []*knock.Door
	if cfg.Knockd != nil {
		fromKnockd = cfg.Knockd.Doors
	}
	for _, d := range cfg.Doors {
		native := !slices.Contains(fromKnockd, d)
		if rot := d.Rotating; rot != nil {
			r.Capture = append(r.Capture, capture.Match{Proto: rot.Proto, Lo: rot.Lo, Hi: rot.Hi})
			if native {
				r.CloseRanges = append(r.CloseRanges, Range{Proto: rot.Proto, Lo: rot.Lo, Hi: rot.Hi})
			}
			continue
		}
		for _, hit := range d.Hits() {
			m := capture.Match{Proto: hit.Proto, Lo: hit.Num, Hi: hit.Num}
			if hit.Proto == knock.ICMP {
				m = capture.Match{Proto: capture.ICMP}
			}
			if !slices.Contains(r.Capture, m) {
				r.Capture = append(r.Capture, m)
			}
			sp := port.Spec{Proto: hit.Proto, Num: hit.Num}
			if native && hit.Proto != knock.ICMP && !slices.Contains(r.Close, sp) {
				r.Close = append(r.Close, sp)
			}
		}
	}
	return r
}

// doorLang is knock sequences: knockd's doors and postern's own.
type doorLang struct {
	cfg *config.Config
	dec *knock.Decoder
}

func (l *doorLang) Name() policy.Language { return policy.Door }
func (l *doorLang) Reasons() []string     { return knock.Reasons }
func (l *doorLang) Routes() Routes        { return doorRoutes(l.cfg) }

func (l *doorLang) Clients() []policy.Client {
	var out []policy.Client
	for _, d := range l.cfg.Doors {
		out = append(out, knock.PolicyClient(d))
	}
	return out
}

func (l *doorLang) Decode(f *capture.Frame, emit policy.Sink) { l.dec.Decode(f, emit) }
func (l *doorLang) Tick(now time.Time, emit policy.Sink)      { l.dec.Expire(now, emit) }
func (l *doorLang) Tracked() uint64                           { return l.dec.Tracked() }
func (l *doorLang) PortsChanged() bool                        { return l.dec.PortsChanged() }
func (l *doorLang) Close()                                    {}
