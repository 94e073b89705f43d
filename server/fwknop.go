package server

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"postern/capture"
	"postern/command"
	"postern/firewall"
	"postern/fko"
	"postern/port"
)

// FwknopReplayFile is the fwknop replay cache inside state_dir.
const FwknopReplayFile = "fwknop-digests"

// fwknop decision names, for logs and counters.
const (
	mFwGranted     = "fwknop granted"
	mFwMalformed   = "fwknop malformed"
	mFwReplay      = "fwknop replay"
	mFwNoStanza    = "fwknop no matching stanza"
	mFwStale       = "fwknop stale timestamp"
	mFwSignature   = "fwknop signature refused"
	mFwSource      = "fwknop source address required"
	mFwUser        = "fwknop username refused"
	mFwNAT         = "fwknop NAT not supported"
	mFwPort        = "fwknop port not allowed"
	mFwCmdRefused  = "fwknop command refused"
	mFwCmdRun      = "fwknop command run"
	mFwCycle       = "fwknop command cycle"
	mFwStateError  = "fwknop state error"
	replayCacheMax = 1_000_000
)

var fwknopMetricNames = []string{mFwGranted, mFwMalformed, mFwReplay, mFwNoStanza, mFwStale, mFwSignature, mFwSource,
	mFwUser, mFwNAT, mFwPort, mFwCmdRefused, mFwCmdRun, mFwCycle, mFwStateError}

// fwknopHandler accepts FKO 3.0.0 packets as fwknopd does, with its faults
// fixed: one log line per packet however many stanzas were tried, replay
// entries only for authenticated packets, kept on disk and pruned by age.
type fwknopHandler struct {
	s      *Server
	cfg    *fkoConfig
	replay *fko.ReplayCache
}

type fkoConfig struct {
	stanzas []*fko.Stanza
	port    uint16
	maxAge  time.Duration
}

func newFwknopHandler(s *Server) (*fwknopHandler, error) {
	c := s.cfg.Fwknop
	if err := os.MkdirAll(s.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	// A packet is refused once its timestamp is max_packet_age away from
	// the clock in either direction, so a digest need not be kept longer
	// than twice that, plus a margin.
	rc, err := fko.OpenReplayCache(filepath.Join(s.cfg.StateDir, FwknopReplayFile), 2*c.MaxPacketAge+time.Minute, replayCacheMax)
	if err != nil {
		return nil, err
	}
	for _, st := range c.Stanzas {
		if st.OpenPorts == nil && st.CmdCycleOpen == "" {
			s.log.Warn("fwknop stanza has no OPEN_PORTS: it may open any port, but postern closes only the ports listed somewhere",
				"stanza", fmt.Sprintf("%s:%d", st.File, st.Line))
		}
	}
	return &fwknopHandler{s: s, replay: rc, cfg: &fkoConfig{stanzas: c.Stanzas, port: c.Port, maxAge: c.MaxPacketAge}}, nil
}

func (h *fwknopHandler) refuse(src netip.Addr, reason string, args ...any) {
	s := h.s
	ok, suppressed := s.count(reason)
	if !ok {
		return
	}
	args = append([]any{"src", src, "reason", reason}, args...)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.log.Warn("fwknop refused", args...)
}

func stanzaName(st *fko.Stanza) string { return st.File + ":" + strconv.Itoa(st.Line) }

func (h *fwknopHandler) handle(f *capture.Frame) {
	if err := fko.Preprocess(f.Payload); err != nil {
		h.refuse(f.Src, mFwMalformed, "detail", err.Error())
		return
	}
	digest := fko.ReplayDigest(f.Payload)
	if h.replay.Seen(digest) {
		h.refuse(f.Src, mFwReplay)
		return
	}
	wire := string(f.Payload)
	gpg := fko.IsGPG(wire)
	tried := 0
	for _, st := range h.cfg.stanzas {
		if !st.Matches(f.Src, f.Dst, f.Time) {
			continue
		}
		keys := st.Rijndael
		if gpg {
			keys = st.GPG
		}
		if keys == nil {
			continue
		}
		tried++
		m, signer, err := keys.Open(wire)
		if err != nil {
			continue
		}
		// Authenticated: from here on the packet is never accepted again,
		// whatever the decision (fwknopd caches before its checks too).
		if err := h.replay.Add(digest, f.Time); err != nil {
			h.s.log.Error("fwknop replay cache", "err", err)
			h.refuse(f.Src, mFwStateError)
			return
		}
		h.decide(f, st, m, signer, gpg)
		return
	}
	h.refuse(f.Src, mFwNoStanza, "stanzas_tried", tried, "gpg", gpg)
}

func (h *fwknopHandler) decide(f *capture.Frame, st *fko.Stanza, m *fko.Message, signer *fko.GPGSigner, gpg bool) {
	src := f.Src
	who := []any{"stanza", stanzaName(st), "user", m.User}
	if gpg && st.GPGRequireSig {
		s := signer
		if s != nil && st.GPGIgnoreSigError {
			c := *s
			c.Good = true
			s = &c
		}
		if !s.Matches(st.GPGRemoteIDs, st.GPGFingerprints) {
			signedBy := "unsigned"
			if signer != nil {
				signedBy = signer.Fingerprint + signer.KeyID
			}
			h.refuse(src, mFwSignature, append(who, "signer", signedBy)...)
			return
		}
	}
	if age := f.Time.Sub(time.Unix(m.Timestamp, 0)); age > h.cfg.maxAge || age < -h.cfg.maxAge {
		h.refuse(src, mFwStale, append(who, "age", age.Round(time.Second))...)
		return
	}
	if m.Type.HasNAT() {
		h.refuse(src, mFwNAT, append(who, "type", int(m.Type))...)
		return
	}
	if st.RequireUsername != "" && m.User != st.RequireUsername {
		h.refuse(src, mFwUser, who...)
		return
	}
	timeout := st.FWAccessTimeout
	if m.ClientTimeout > 0 {
		timeout = min(m.ClientTimeout, st.MaxFWTimeout)
	}
	if m.Type == fko.CommandMsg {
		h.command(f, st, m, who)
		return
	}
	acc, err := fko.ParseAccessMessage(m.Message)
	if err != nil {
		h.refuse(src, mFwMalformed, append(who, "detail", err.Error())...)
		return
	}
	allow := acc.Allow
	if allow.IsUnspecified() {
		// 0.0.0.0: "use the packet's source" (fwknop -s).
		if st.RequireSource {
			h.refuse(src, mFwSource, who...)
			return
		}
		allow = src
	}
	for _, p := range acc.Ports {
		if !st.PortAllowed(p) {
			h.refuse(src, mFwPort, append(who, "ports", port.Join(acc.Ports))...)
			return
		}
	}
	if st.CmdCycleOpen != "" {
		h.cycle(f, st, allow, acc.Ports, timeout, who)
		return
	}
	gs := make([]firewall.Grant, len(acc.Ports))
	for i, p := range acc.Ports {
		gs[i] = firewall.Grant{Addr: allow, Port: p, Timeout: time.Duration(timeout) * time.Second}
	}
	if !h.s.grant(gs, src, stanzaName(st)) {
		return
	}
	h.s.metrics.inc(mFwGranted)
	h.s.log.Info("fwknop granted", append([]any{"src", src, "allow", allow, "ports", port.Join(acc.Ports),
		"timeout", time.Duration(timeout) * time.Second}, who...)...)
}

// command runs a command message (ENABLE_CMD_EXEC): as an argument vector,
// never through a shell, as CMD_EXEC_USER/GROUP when set.
func (h *fwknopHandler) command(f *capture.Frame, st *fko.Stanza, m *fko.Message, who []any) {
	if !st.EnableCmdExec {
		h.refuse(f.Src, mFwCmdRefused, who...)
		return
	}
	_, cmd, err := fko.ParseCommandMessage(m.Message)
	if err != nil {
		h.refuse(f.Src, mFwMalformed, append(who, "detail", err.Error())...)
		return
	}
	how := command.How{NoShell: true, User: st.CmdExecUser, Group: st.CmdExecGroup}
	if err := h.s.runner.RunExpanded("fwknop "+stanzaName(st), f.Src, cmd, "", 0, how); err != nil {
		h.s.log.Error("fwknop command not run", "src", f.Src, "err", err)
		return
	}
	h.s.metrics.inc(mFwCmdRun)
	h.s.log.Info("fwknop command", append([]any{"src", f.Src, "command", cmd}, who...)...)
}

// cycle runs CMD_CYCLE_OPEN now and CMD_CYCLE_CLOSE after CMD_CYCLE_TIMER,
// once per requested port, with fwknop's substitutions.
func (h *fwknopHandler) cycle(f *capture.Frame, st *fko.Stanza, allow netip.Addr, ports []port.Spec, timeout int, who []any) {
	for _, p := range ports {
		r := strings.NewReplacer("$PKT_SRC", f.Src.String(), "$SRC", allow.String(), "$IP", allow.String(),
			"$DST", f.Dst.String(), "$PORT", strconv.Itoa(int(p.Num)), "$PROTO", p.Proto.String(),
			"$TIMEOUT", strconv.Itoa(timeout))
		open, closeCmd := r.Replace(st.CmdCycleOpen), ""
		if st.CmdCycleClose != "" {
			closeCmd = r.Replace(st.CmdCycleClose)
		}
		err := h.s.runner.RunExpanded("fwknop "+stanzaName(st), allow, open, closeCmd,
			time.Duration(st.CmdCycleTimer)*time.Second, command.How{NoShell: true})
		if err != nil {
			h.s.log.Error("fwknop command cycle not run", "src", f.Src, "err", err)
			return
		}
	}
	h.s.metrics.inc(mFwCycle)
	h.s.log.Info("fwknop command cycle", append([]any{"src", f.Src, "allow", allow, "ports", port.Join(ports)}, who...)...)
}
