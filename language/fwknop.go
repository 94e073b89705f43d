package language

import (
	"slices"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/config"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
)

// FwknopReplayFile is fwknop's replay cache, in state_dir.
const FwknopReplayFile = "fwknop-digests"

var fwknopSpec = Spec{
	Name:     policy.Fwknop,
	Enabled:  func(cfg *config.Config) bool { return cfg.Fwknop != nil },
	Routes:   fwknopRoutes,
	Commands: fwknopCommands,
	Reasons:  fko.Reasons,
	Open:     openFwknop,
	last:     true, // its GnuPG workers start at Open
}

func fwknopRoutes(cfg *config.Config) Routes {
	p := port.Spec{Proto: port.UDP, Num: cfg.Fwknop.Port}
	r := Routes{Capture: capture.PortMatches([]port.Spec{p}), UDP: []uint16{p.Num}}
	if cfg.Capture == "afpacket" {
		r.Close = []port.Spec{p}
	}
	return r
}

func fwknopCommands(cfg *config.Config) bool {
	return slices.ContainsFunc(cfg.Fwknop.Stanzas, func(st *fko.Stanza) bool { return st.CmdCycleOpen != "" || st.EnableCmdExec })
}

func openFwknop(cfg *config.Config, env Env) (Language, error) {
	f := cfg.Fwknop
	// A packet is refused once its timestamp is max_packet_age away from
	// the clock in either direction, so a digest need not be kept longer
	// than twice that, plus a margin.
	replay, err := env.State.ReplayCache(FwknopReplayFile, 2*f.MaxPacketAge+time.Minute, 1_000_000)
	if err != nil {
		return nil, err
	}
	if fwknopCommands(cfg) {
		if _, err := env.State.Runner(); err != nil {
			return nil, err
		}
	}
	for _, st := range f.Stanzas {
		if st.OpenPorts == nil && st.CmdCycleOpen == "" {
			env.Log.Warn("fwknop stanza has no OPEN_PORTS: it may open any port, but postern closes only the ports listed somewhere",
				"stanza", fko.StanzaName(st))
		}
		if st.GPG != nil && len(st.GPG.HMACKey) == 0 {
			env.Log.Warn("fwknop GnuPG stanza without HMAC_KEY: anyone with the server's GnuPG public key can make postern run gpg "+
				"(bounded per source and in total, output capped); add an HMAC key", "stanza", fko.StanzaName(st))
		}
	}
	return &fwknopLang{cfg: cfg, dec: fko.NewDecoder(fko.DecoderConfig{Stanzas: f.Stanzas, MaxAge: f.MaxPacketAge, Replay: replay,
		Async: env.Sink, Workers: 2, Queue: 64, PerSourceRate: 2, PerSourceBurst: 4, NAT: f.NAT})}, nil
}

// fwknopLang is fwknop's SPA: access.conf stanzas, GnuPG on workers.
type fwknopLang struct {
	cfg *config.Config
	dec *fko.Decoder
}

func (l *fwknopLang) Name() policy.Language { return policy.Fwknop }
func (l *fwknopLang) Reasons() []string     { return fko.Reasons }
func (l *fwknopLang) Routes() Routes        { return fwknopRoutes(l.cfg) }
func (l *fwknopLang) Clients() []policy.Client {
	cs := fko.PolicyClients(l.cfg.Fwknop.Stanzas, l.cfg.Fwknop.NAT)
	for i := range cs {
		cs[i].Lifetime = l.cfg.Fwknop.Lifetime
	}
	return cs
}
func (l *fwknopLang) Decode(f *capture.Frame, emit policy.Sink) { l.dec.Decode(f, emit) }
func (l *fwknopLang) Tick(time.Time, policy.Sink)               {}
func (l *fwknopLang) Close()                                    { l.dec.Close() }
