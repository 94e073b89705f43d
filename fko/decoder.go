package fko

import (
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/ratelimit"
)

// Refusal reasons of the fwknop language.
const (
	ReasonMalformed  = "malformed"
	ReasonReplay     = "replay"
	ReasonNoStanza   = "no matching stanza"
	ReasonStale      = "stale timestamp"
	ReasonSignature  = "signature refused"
	ReasonSource     = "source address required"
	ReasonUser       = "username refused"
	ReasonNAT        = "NAT refused"
	ReasonPort       = "port not allowed"
	ReasonCmdRefused = "command refused"
	ReasonState      = "state error"
	ReasonGPGBusy    = "gnupg queue full"
	ReasonGPGLimited = "gnupg rate limited"
	ReasonGPGBudget  = "gnupg budget exhausted"
	ReasonLimited    = "rate limited"
	ReasonBudget     = "stanza trial budget exhausted"
)

// Reasons lists the refusal reasons, for metrics.
var Reasons = []string{ReasonMalformed, ReasonReplay, ReasonNoStanza, ReasonStale, ReasonSignature, ReasonSource,
	ReasonUser, ReasonNAT, ReasonPort, ReasonCmdRefused, ReasonState, ReasonGPGBusy, ReasonGPGLimited, ReasonGPGBudget,
	ReasonLimited, ReasonBudget}

// Bounds on stanza trials. Every packet costs one HMAC per stanza whose
// SOURCE matches (about 0.5 µs each), so junk from one source is limited
// before any trial, and all sources together get a budget of trials a
// second: with 100 stanzas, 1 000 packets a second, a tenth of a core.
const (
	perSourceRate, perSourceBurst = 10, 20
	trialsPerSecond               = 100_000
)

// DecoderConfig configures a Decoder.
type DecoderConfig struct {
	Stanzas []*Stanza
	MaxAge  time.Duration // fwknopd's MAX_SPA_PACKET_AGE
	Replay  *ReplayCache
	// Async receives the verdicts of GnuPG packets, which are decrypted
	// on worker goroutines; it must be safe for concurrent use.
	Async policy.Sink
	// Workers and Queue bound GnuPG work: that many gpg processes at
	// once, that many packets waiting; more are refused and counted.
	Workers, Queue int
	// PerSource limits GnuPG packets per source address (rate a second,
	// burst); one source cannot fill the queue.
	PerSourceRate, PerSourceBurst float64
	// Rate and Burst bound GnuPG work from all sources together: a flood
	// from many sources costs at most this many gpg runs a second.
	Rate, Burst float64
	// NAT holds fwknopd.conf's gateway switches.
	NAT NATOptions
}

// NATOptions are fwknopd.conf's gateway switches, which postern.toml's
// [fwknop] table sets.
type NATOptions struct {
	Forwarding      bool       // ENABLE_IPT_FORWARDING: NAT requests and FORCE_NAT forward to inside hosts
	LocalNAT        bool       // ENABLE_IPT_LOCAL_NAT: local NAT requests
	SNAT            bool       // ENABLE_IPT_SNAT: forwarded traffic gets a new source
	SNATTranslateIP netip.Addr // SNAT_TRANSLATE_IP: that source (else masquerade)
}

// Decoder is the fwknop language in the daemon's pipeline: it accepts FKO
// 3.0.0 packets as fwknopd does — the first stanza whose SOURCE and
// DESTINATION match and whose keys open the packet decides; its signer,
// age, NAT, username and source rules are checked; CMD_CYCLE commands get
// fwknop's substitutions — and turns each into a policy Request. Replay
// entries are made only for authenticated packets. GnuPG packets never
// wait on the capture goroutine: they go to a bounded worker pool.
type Decoder struct {
	cfg    DecoderConfig
	out    policy.Verdict // the capture goroutine's
	gpg    bool           // some stanza takes GnuPG
	jobs   chan gpgJob
	limit  *ratelimit.Limiter // GnuPG, per source
	budget *ratelimit.Limiter // GnuPG, all sources: one bucket
	// Rijndael packets: per source, and a budget of packets for all
	// sources derived from trialsPerSecond and the stanza count.
	junkLimit, trialBudget *ratelimit.Limiter
	wg                     sync.WaitGroup
}

type gpgJob struct {
	wire     string
	src, dst netip.Addr
	at       time.Time
}

// NewDecoder starts the GnuPG workers if a stanza needs them.
func NewDecoder(c DecoderConfig) *Decoder {
	d := &Decoder{cfg: c}
	rijndael := 0
	for _, st := range c.Stanzas {
		d.gpg = d.gpg || st.GPG != nil
		if st.Rijndael != nil {
			rijndael++
		}
	}
	d.junkLimit = ratelimit.New(perSourceRate, perSourceBurst, 65536)
	packets := float64(trialsPerSecond / max(rijndael, 1))
	d.trialBudget = ratelimit.New(packets, packets, 1)
	if d.gpg {
		d.jobs = make(chan gpgJob, max(c.Queue, 1))
		rate, burst := c.PerSourceRate, c.PerSourceBurst
		if rate <= 0 {
			rate, burst = 2, 4
		}
		d.limit = ratelimit.New(rate, burst, 65536)
		rate, burst = c.Rate, c.Burst
		if rate <= 0 {
			rate, burst = 20, 40
		}
		d.budget = ratelimit.New(rate, burst, 1)
		for range max(c.Workers, 1) {
			d.wg.Add(1)
			go d.worker()
		}
	}
	return d
}

// Close stops the workers after the packets they hold.
func (d *Decoder) Close() {
	if d.jobs != nil {
		close(d.jobs)
		d.wg.Wait()
		d.jobs = nil
	}
}

// Decode takes one packet to the fwknop port.
func (d *Decoder) Decode(f *capture.Frame, emit policy.Sink) {
	v := &d.out
	if err := Preprocess(f.Payload); err != nil {
		v.Refuse(policy.Fwknop, f.Src, "", ReasonMalformed, slog.String("detail", err.Error()))
		emit(v)
		return
	}
	wire := string(f.Payload)
	if IsGPG(wire) && d.gpg {
		switch {
		case !d.limit.Allow(f.Src, f.Time):
			v.Refuse(policy.Fwknop, f.Src, "", ReasonGPGLimited)
		case !d.budget.Allow(netip.Addr{}, f.Time):
			v.Refuse(policy.Fwknop, f.Src, "", ReasonGPGBudget)
		default:
			select {
			case d.jobs <- gpgJob{wire: wire, src: f.Src, dst: f.Dst, at: f.Time}:
				return // its verdict comes from a worker
			default:
				v.Refuse(policy.Fwknop, f.Src, "", ReasonGPGBusy)
			}
		}
		emit(v)
		return
	}
	switch {
	case !d.junkLimit.Allow(f.Src, f.Time):
		v.Refuse(policy.Fwknop, f.Src, "", ReasonLimited)
	case !d.trialBudget.Allow(netip.Addr{}, f.Time):
		v.Refuse(policy.Fwknop, f.Src, "", ReasonBudget)
	default:
		d.decode(wire, f.Src, f.Dst, f.Time, v)
	}
	emit(v)
}

func (d *Decoder) worker() {
	defer d.wg.Done()
	var v policy.Verdict
	for j := range d.jobs {
		d.decode(j.wire, j.src, j.dst, j.at, &v)
		d.cfg.Async(&v)
	}
}

// decode tries the stanzas in order; the first that opens the packet
// decides it.
func (d *Decoder) decode(wire string, src, dst netip.Addr, at time.Time, v *policy.Verdict) {
	gpg := IsGPG(wire)
	tried, decrypted := 0, false
	var refused policy.Verdict
	for _, st := range d.cfg.Stanzas {
		if !st.Matches(src, dst, at) {
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
		if !decrypted {
			// Authenticated: from here on the packet is never accepted
			// again, whatever the decision (fwknopd caches before its
			// checks too). The cache holds what was authenticated, not
			// the wire text: the same message in other base64 is the same
			// knock.
			switch err := d.cfg.Replay.Add(ContentDigest(m), at); {
			case errors.Is(err, ErrReplayed):
				v.Refuse(policy.Fwknop, src, StanzaName(st), ReasonReplay)
				return
			case err != nil:
				v.Refuse(policy.Fwknop, src, StanzaName(st), ReasonState, slog.String("detail", err.Error()))
				return
			}
			decrypted = true
		}
		d.decide(st, m, signer, gpg, src, dst, at, v)
		if v.Reason == "" {
			return
		}
		// As fwknopd: a stanza whose checks fail after decryption hands
		// the packet on to the next matching stanza; the last refusal is
		// the answer if none grants.
		refused = *v
	}
	if decrypted {
		*v = refused
		return
	}
	v.Refuse(policy.Fwknop, src, "", ReasonNoStanza, slog.Int("stanzas_tried", tried), slog.Bool("gpg", gpg))
}

// StanzaName is a stanza's identity in policy and logs: FILE:LINE.
func StanzaName(st *Stanza) string { return st.File + ":" + strconv.Itoa(st.Line) }

// Long on purpose: fwknopd's checks in fwknopd's order (incoming_spa.c), one after the other, so that the order reads as fwknopd's.
func (d *Decoder) decide(st *Stanza, m *Message, signer *GPGSigner, gpg bool, src, dst netip.Addr, at time.Time, v *policy.Verdict) {
	// fwknopd's order (incoming_spa.c): signer, timeout, age, allow
	// address and REQUIRE_SOURCE_ADDRESS, REQUIRE_USERNAME, NAT, commands,
	// ports.
	who := StanzaName(st)
	user := slog.String("user", m.User)
	if gpg && st.GPGRequireSig {
		s := signer
		if s != nil && st.GPGIgnoreSigError {
			c := *s
			c.Good = true
			s = &c
		}
		if !s.Matches(st.GPGRemoteIDs, st.GPGFingerprints) {
			signedBy, why := "unsigned", s.Problem()
			if signer != nil {
				signedBy = signer.Fingerprint + signer.KeyID
			}
			if why == "" {
				why = "the signer is not in GPG_REMOTE_ID or GPG_FINGERPRINT_ID"
			}
			v.Refuse(policy.Fwknop, src, who, ReasonSignature, user, slog.String("signer", signedBy), slog.String("why", why))
			return
		}
	}
	timeout := st.FWAccessTimeout
	if m.ClientTimeout > 0 {
		timeout = min(m.ClientTimeout, st.MaxFWTimeout)
	}
	if age := at.Sub(time.Unix(m.Timestamp, 0)); age > d.cfg.MaxAge || age < -d.cfg.MaxAge {
		v.Refuse(policy.Fwknop, src, who, ReasonStale, user, slog.Duration("age", age.Round(time.Second)))
		return
	}
	if m.Type == CommandMsg {
		if st.RequireUsername != "" && m.User != st.RequireUsername {
			v.Refuse(policy.Fwknop, src, who, ReasonUser, user)
			return
		}
		d.command(st, m, src, v)
		return
	}
	acc, err := ParseAccessMessage(m.Message)
	if err != nil {
		v.Refuse(policy.Fwknop, src, who, ReasonMalformed, user, slog.String("detail", err.Error()))
		return
	}
	allow := acc.Allow
	if allow.IsUnspecified() {
		// 0.0.0.0: "use the packet's source" (fwknop -s).
		if st.RequireSource {
			v.Refuse(policy.Fwknop, src, who, ReasonSource, user)
			return
		}
		allow = src
	}
	if st.RequireUsername != "" && m.User != st.RequireUsername {
		v.Refuse(policy.Fwknop, src, who, ReasonUser, user)
		return
	}
	nat, why := d.natRequest(st, m, dst)
	if why != "" {
		v.Refuse(policy.Fwknop, src, who, ReasonNAT, user, slog.Int("type", int(m.Type)), slog.String("detail", why))
		return
	}
	for _, p := range acc.Ports {
		if !st.PortAllowed(p) {
			v.Refuse(policy.Fwknop, src, who, ReasonPort, user, slog.String("ports", port.Join(acc.Ports)))
			return
		}
	}
	r := policy.Request{Language: policy.Fwknop, Client: who, Src: src, Allow: allow, Ports: acc.Ports,
		Duration: time.Duration(timeout) * time.Second}
	if nat.to.IsValid() && st.ForwardAll && !nat.local {
		// FORWARD_ALL: everything from the client, DNATed to the NAT
		// host (none for FORCE_NAT 0.0.0.0 0) unless DISABLE_DNAT.
		r.Ports, r.To, r.ForwardAll = acc.Ports, nat.to, true
		v.Grant(r, user, slog.String("nat_request", nat.to.String()), slog.Bool("forward_all", true))
		return
	}
	if nat.to.IsValid() {
		// fwknopd (process_spa_request): a NAT request opens the first
		// requested port only, forwarded to the NAT host and port, the
		// requested port being the one the client connects to.
		first := acc.Ports[0]
		r.Ports = []port.Spec{{Proto: first.Proto, Num: nat.port}}
		r.To, r.External, r.LocalNAT = nat.to, first.Num, nat.local
		v.Grant(r, user, slog.String("nat_request", netip.AddrPortFrom(nat.to, nat.port).String()))
		return
	}
	if st.CmdCycleOpen != "" {
		// CMD_CYCLE runs its commands instead of a grant.
		r.Commands = cycleCommands(st, src, dst, allow, acc.Ports, m.ClientTimeout, m.Timestamp)
		r.Ports = nil
		v.Grant(r, user, slog.String("allow", allow.String()), slog.String("ports", port.Join(acc.Ports)))
		return
	}
	v.Grant(r, user)
}

// natTarget is where a NAT request (or FORCE_NAT) leads.
type natTarget struct {
	to    netip.Addr
	port  uint16
	local bool
}

// natRequest reads the NAT part of an access request: the stanza's
// FORCE_NAT, else the message's NAT field. why says what is refused: NAT
// types fwknopd.conf's switches leave off (fwknopd then tries the next
// stanza, as the refusal here does), and host names (fwknopd's
// ENABLE_NAT_DNS: postern resolves nothing on the packet path).
func (d *Decoder) natRequest(st *Stanza, m *Message, dst netip.Addr) (natTarget, string) {
	local := m.Type == LocalNATAccessMsg || m.Type == ClientTimeoutLocalNATAccessMsg
	switch {
	case m.Type.HasNAT() && local && !d.cfg.NAT.LocalNAT:
		return natTarget{}, "local NAT is not enabled ([fwknop] local_nat)"
	case m.Type.HasNAT() && !local && !d.cfg.NAT.Forwarding:
		return natTarget{}, "forwarding is not enabled ([fwknop] forwarding)"
	case st.ForceNAT.IsValid() && !local:
		if !d.cfg.NAT.Forwarding {
			return natTarget{}, "forwarding is not enabled ([fwknop] forwarding)"
		}
		return natTarget{to: st.ForceNAT.Addr(), port: st.ForceNAT.Port()}, ""
	case !m.Type.HasNAT():
		return natTarget{}, ""
	}
	host, ps, ok := strings.Cut(m.NAT, ",")
	p, err := strconv.ParseUint(ps, 10, 16)
	if !ok || err != nil || p == 0 {
		return natTarget{}, "malformed NAT field"
	}
	if st.ForceNAT.IsValid() {
		// FORCE_NAT decides the destination; a local request keeps it.
		return natTarget{to: dst, port: st.ForceNAT.Port(), local: true}, ""
	}
	if local {
		// The client names the server as it sees it (possibly through a
		// NAT of its own); the packet's destination is this host's own
		// address.
		return natTarget{to: dst, port: uint16(p), local: true}, ""
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return natTarget{}, "host names in NAT requests are not resolved: send an address"
	}
	if !a.Unmap().IsGlobalUnicast() {
		return natTarget{}, "NAT address is not a unicast address"
	}
	return natTarget{to: a.Unmap(), port: uint16(p)}, ""
}

// cycleCommands is CMD_CYCLE_OPEN now and CMD_CYCLE_CLOSE later, as
// fwknopd 2.6.10 runs them (server/cmd_cycle.c): for the first requested
// port only; the close after the client's timeout, else CMD_CYCLE_TIMER;
// $PROTO the protocol number (6), $TIMEOUT the packet's timestamp plus that
// delay (epoch seconds), $CLIENT_TIMEOUT what the client asked for (0).
func cycleCommands(st *Stanza, src, dst, allow netip.Addr, ports []port.Spec, clientTimeout int, stamp int64) []policy.Command {
	p := ports[0]
	delay := st.CmdCycleTimer
	if clientTimeout > 0 {
		delay = clientTimeout
	}
	r := strings.NewReplacer("$PKT_SRC", src.String(), "$SRC", allow.String(), "$IP", allow.String(),
		"$DST", dst.String(), "$PORT", strconv.Itoa(int(p.Num)), "$PROTO", strconv.Itoa(int(p.Proto)),
		"$CLIENT_TIMEOUT", strconv.Itoa(clientTimeout), "$TIMEOUT", strconv.FormatInt(stamp+int64(delay), 10))
	c := policy.Command{Start: r.Replace(st.CmdCycleOpen), StopAfter: time.Duration(delay) * time.Second, NoShell: true, Addr: allow}
	if st.CmdCycleClose != "" {
		c.Stop = r.Replace(st.CmdCycleClose)
	}
	return []policy.Command{c}
}

// command is a command message (ENABLE_CMD_EXEC): run as an argument
// vector, never through a shell, as CMD_EXEC_USER/GROUP when set.
func (d *Decoder) command(st *Stanza, m *Message, src netip.Addr, v *policy.Verdict) {
	who, user := StanzaName(st), slog.String("user", m.User)
	if !st.EnableCmdExec {
		v.Refuse(policy.Fwknop, src, who, ReasonCmdRefused, user)
		return
	}
	_, cmd, err := ParseCommandMessage(m.Message)
	if err != nil {
		v.Refuse(policy.Fwknop, src, who, ReasonMalformed, user, slog.String("detail", err.Error()))
		return
	}
	v.Grant(policy.Request{Language: policy.Fwknop, Client: who, Src: src, Commands: []policy.Command{{
		Start: cmd, NoShell: true, User: st.CmdExecUser, Group: st.CmdExecGroup, Addr: src}}}, user)
}

// PolicyClients are what each stanza may do, for package policy: its
// ports (OPEN_PORTS less RESTRICT_PORTS), up to MAX_FW_TIMEOUT, its
// commands, and with forwarding on any destination the decoder names,
// translated as fwknopd's snat_rule does: FORCE_SNAT's address, else
// FORCE_MASQUERADE, else (with ENABLE_IPT_SNAT) SNAT_TRANSLATE_IP, else
// masquerade.
func PolicyClients(stanzas []*Stanza, nat NATOptions) []policy.Client {
	out := make([]policy.Client, 0, len(stanzas))
	for _, st := range stanzas {
		c := policy.Client{Language: policy.Fwknop, Name: StanzaName(st), AllowPort: st.PortAllowed,
			MaxDuration:     time.Duration(max(st.MaxFWTimeout, st.FWAccessTimeout)) * time.Second,
			DefaultDuration: time.Duration(st.FWAccessTimeout) * time.Second, AllowSource: true,
			Commands:   st.CmdCycleOpen != "" || st.EnableCmdExec,
			ForwardAny: nat.Forwarding, LocalNAT: nat.LocalNAT, NoDNAT: st.DisableDNAT,
			ForwardAll: nat.Forwarding && st.ForwardAll}
		if st.ForceSNAT.IsValid() || st.ForceMasquerade || nat.SNAT {
			switch {
			case st.ForceSNAT.IsValid():
				c.AnyNAT.SNAT = st.ForceSNAT
			case st.ForceMasquerade:
				c.AnyNAT.Masquerade = true
			case nat.SNATTranslateIP.IsValid():
				c.AnyNAT.SNAT = nat.SNATTranslateIP
			default:
				c.AnyNAT.Masquerade = true
			}
		}
		out = append(out, c)
	}
	return out
}
