// Package language is the contract between the daemon and a knock
// language (postern SPA, fwknop, door sequences, covert knocks): what a
// language tells the daemon (the frames it takes, the ports it closes, the
// identities policy decides about, the reasons it refuses for) and what
// the daemon asks of it (decode a frame, tick, close). The server loops
// over a list of Languages and owns no protocol logic; each language turns
// frames into policy verdicts and never touches the firewall, commands,
// logs or metrics itself.
//
// A language is described by a Spec: from the configuration alone it says
// whether it is in use and what it needs from capture and the firewall (so
// the closed state goes in before any key is read), and Open builds the
// Language. All lists every Spec; adding a language is its package, its
// part of the configuration and one Spec here.
package language

import (
	"log/slog"
	"slices"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/command"
	"github.com/postern/postern/config"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/replay"
)

// Language is one knock language, built for one configuration. Decode is
// called from the capture goroutine only, Tick from the expiry timer only;
// verdicts may also come from a language's own workers (GnuPG, SPA
// verification), through the Sink it was opened with. After Close returns,
// no verdict comes.
type Language interface {
	Name() policy.Language
	// Reasons are the refusal reasons it counts, beside policy's.
	Reasons() []string
	// Clients are the identities policy decides about.
	Clients() []policy.Client
	// Routes say which frames it takes and what the firewall closes for it.
	Routes() Routes
	// Decode takes one frame Routes sent it; its verdicts go to emit.
	Decode(f *capture.Frame, emit policy.Sink)
	// Tick runs the language's timers: attempts that timed out, stale
	// halves of knocks, clocks clamped.
	Tick(now time.Time, emit policy.Sink)
	// Close stops its workers, after they have finished what they hold.
	Close()
}

// Optional parts, which only some languages have.
type (
	// Tracker counts what a language holds per source (door attempts).
	Tracker interface{ Tracked() uint64 }
	// Evicter counts sources evicted from a full table (covert halves).
	Evicter interface{ Evictions() uint64 }
	// PortChanger says, once, that the ports it needs changed (a one-time
	// sequence moved on): the daemon then re-derives the firewall rules
	// and the capture filter.
	PortChanger interface{ PortsChanged() bool }
)

// Routes are what a language needs from capture and the firewall, and
// which frames are its.
type Routes struct {
	// Capture is what the capture filter must pass.
	Capture []capture.Match
	// Close are ports postern drops for everyone (knock ports): the host
	// never answers a knock.
	Close []port.Spec
	// CloseRanges are port ranges dropped likewise (rotating sequences).
	CloseRanges []Range
	// UDP and TCP are the destination ports whose frames are this
	// language's.
	UDP, TCP []uint16
	// Claims, where two languages share a UDP port, says whether a
	// payload is this one's (postern SPA is binary of fixed sizes, an
	// fwknop packet base64 text). Nil: it takes what no other claims.
	Claims func(payload []byte) bool
	// Rest makes it take every captured frame no port routes (door hits,
	// whatever their port).
	Rest bool
}

// Range is the ports Lo..Hi of one protocol.
type Range struct {
	Proto  port.Protocol
	Lo, Hi uint16
}

// State is what outlives a reload and is shared by the languages: the
// files in state_dir and the command runner, opened once.
type State interface {
	// Timestamps opens (once) the strictly-increasing-timestamp store in
	// the state file name.
	Timestamps(name string) (replay.Store, error)
	// ReplayCache opens (once) fwknop's digest cache in the state file name.
	ReplayCache(name string, keep time.Duration, max int) (*fko.ReplayCache, error)
	// Runner opens (once) the command runner and its journal of pending
	// stop commands.
	Runner() (*command.Runner, error)
}

// Env is what Open gets besides the configuration.
type Env struct {
	State State
	Log   *slog.Logger
	// Sink receives the verdicts a language's workers reach on their own.
	Sink policy.Sink
}

// Spec describes a language to the daemon.
type Spec struct {
	Name policy.Language
	// Enabled reports whether cfg uses the language.
	Enabled func(cfg *config.Config) bool
	// Routes derives its routes from cfg alone: no key or state file is
	// read, so the closed state can be installed first.
	Routes func(cfg *config.Config) Routes
	// Commands reports whether cfg makes it run commands (the runner is
	// then opened, and the daemon keeps what running them needs).
	Commands func(cfg *config.Config) bool
	// Reasons are its refusal reasons, known without a configuration (the
	// counters exist from the start: a reload may add the language).
	Reasons []string
	// Open builds it for cfg.
	Open func(cfg *config.Config, env Env) (Language, error)
	// last: opened after the others (it starts workers at Open, which
	// nothing opened after it may fail and leave running).
	last bool
}

// All lists the knock languages, in the order their routes are merged.
var All = []Spec{spaSpec, fwknopSpec, coverSpec, doorSpec}

// Enabled returns the Specs cfg uses.
func Enabled(cfg *config.Config) []Spec {
	var out []Spec
	for _, s := range All {
		if s.Enabled(cfg) {
			out = append(out, s)
		}
	}
	return out
}

// NeedsCommands reports whether any language of cfg runs commands.
func NeedsCommands(cfg *config.Config) bool {
	return slices.ContainsFunc(Enabled(cfg), func(s Spec) bool { return s.Commands != nil && s.Commands(cfg) })
}

// OpenAll opens every language cfg uses; if one fails, those opened before
// it are closed again.
func OpenAll(cfg *config.Config, env Env) ([]Language, error) {
	specs := Enabled(cfg)
	slices.SortStableFunc(specs, func(a, b Spec) int {
		switch {
		case a.last == b.last:
			return 0
		case a.last:
			return 1
		}
		return -1
	})
	var out []Language
	for _, s := range specs {
		l, err := s.Open(cfg, env)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}
