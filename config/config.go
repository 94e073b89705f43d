// Package config reads postern.toml: strictly decoded into a raw struct (an
// unknown key is an error), then validated into the Config the program uses.
// Every error names the file, the line and the key. Loading never touches the
// firewall or the network.
package config

import (
	"bytes"
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/postern/postern/covert"
	"github.com/postern/postern/firewall/mode"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/internal/conferr"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// Config is a validated configuration.
type Config struct {
	Path           string
	Interface      string   // capture interfaces, comma-separated, or "any"
	Interfaces     []string // the same, one name each
	Capture        string   // "afpacket" or "udp"
	PrivateKeyFile string
	StateDir       string
	MetricsListen  string // empty: no metrics endpoint
	// MetricsToken, when set, is the bearer token the metrics endpoint
	// asks for (metrics_token_file).
	MetricsToken   string
	AnyDestination bool   // count knocks to addresses not on this host (afpacket capture)
	LogFormat      string // "text" or "json"
	SPA            SPA
	Firewall       Firewall
	Clients        []Client // empty: no SPA

	// Port-knock doors from [[door]] tables and from knockd_file.
	Doors      []*knock.Door
	Knockd     *knock.KnockdConf // nil without knockd_file
	MaxTracked int               // knock attempts tracked at most

	Fwknop *Fwknop // nil without [fwknop]

	Covert []Covert // covert knock doors

	SSH *SSH // nil without [ssh]

	Gateway Gateway

	// Warnings are what the files named allow but their own daemons only
	// warn about (fwknopd and unknown access.conf keywords), with file:line.
	Warnings []string
}

// SPAEnabled reports whether postern SPA knocks are served: native
// [[client]]s or OpenSSH identities.
func (c *Config) SPAEnabled() bool { return len(c.Clients) > 0 || c.SSH != nil }

// Covert is a [[covert]] door: SYNs to a closed TCP port that carry an
// authenticated request in their header fields.
type Covert = covert.Door

// CovertClient is one client of a covert door.
type CovertClient = covert.Client

// Fwknop configures fwknop (FKO 3.0.0) compatibility.
type Fwknop struct {
	AccessFile   string
	Port         uint16
	MaxPacketAge time.Duration
	Stanzas      []*fko.Stanza
	NAT          fko.NATOptions  // fwknopd.conf's gateway switches
	Lifetime     policy.Lifetime // how every stanza's grants end
}

// Gateway configures the forward path (gateway mode).
type Gateway struct {
	// Protect lists destinations behind this host closed on the forward
	// path except for grants, beyond those clients may be granted (which
	// are always closed).
	Protect []policy.Destination
	// Published closes protected ports on connections that others DNAT to
	// another host, such as the ports Docker publishes.
	Published bool
}

// SPA configures postern SPA v1.
type SPA struct {
	Port          uint16
	MaxSkew       time.Duration
	Destinations  []netip.Addr
	SourcePrefix6 int // IPv6 sources share a rate limit per prefix of this length
	Workers       int // goroutines verifying knocks with a valid mac1; 0: one per core
}

// Firewall configures the backend.
type Firewall struct {
	Backend      mode.Mode
	RemoveOnExit bool // revoke live grants on SIGTERM instead of letting them expire
}

// Client is one authorised client.
type Client struct {
	Name            string
	PublicKey       spa.ClientPublicKey
	Allow           []port.Spec
	MaxDuration     time.Duration
	DefaultDuration time.Duration
	AllowSource     bool
	Forward         []policy.Forward // destinations behind this host it may reach
	Lifetime        policy.Lifetime  // how its grants end (grant = "once", idle)
}

// Defaults for keys that may be left out.
const (
	DefaultStateDir    = "/var/lib/postern"
	DefaultSPAPort     = 62201
	DefaultMaxSkew     = 30 * time.Second
	DefaultDuration    = 30 * time.Second
	DefaultMaxDuration = 5 * time.Minute
	DefaultMaxTracked  = 100_000
	DefaultDoorTimeout = 5 * time.Second
	DefaultDoorFlags   = "syn,!ack"
	DefaultPeriod      = 30 * time.Second
	DefaultLength      = 4
	DefaultPortRange   = "20000-39999"
	// fwknopd's MAX_SPA_PACKET_AGE.
	DefaultMaxPacketAge = 120 * time.Second
)

type rawConfig struct {
	Interface      any         `toml:"interface"` // a name, or a list of names
	Capture        string      `toml:"capture"`
	PrivateKeyFile string      `toml:"private_key_file"`
	StateDir       string      `toml:"state_dir"`
	MetricsListen  string      `toml:"metrics_listen"`
	MetricsPublic  bool        `toml:"metrics_allow_public"`
	MetricsToken   string      `toml:"metrics_token_file"`
	AnyDestination bool        `toml:"any_destination"`
	LogFormat      string      `toml:"log_format"`
	SPA            rawSPA      `toml:"spa"`
	Firewall       rawFirewall `toml:"firewall"`
	Clients        []rawClient `toml:"client"`
	KnockdFile     string      `toml:"knockd_file"`
	Knock          rawKnock    `toml:"knock"`
	Doors          []rawDoor   `toml:"door"`
	Fwknop         *rawFwknop  `toml:"fwknop"`
	Covert         []rawCovert `toml:"covert"`
	SSH            *rawSSH     `toml:"ssh"`
	Gateway        rawGateway  `toml:"gateway"`
}

type rawGateway struct {
	Protect   []string `toml:"protect"`
	Published bool     `toml:"published"`
}

type rawCovert struct {
	Name    string            `toml:"name"`
	Port    int               `toml:"port"`
	MaxSkew string            `toml:"max_skew"`
	Clients []rawCovertClient `toml:"client"`
}

type rawCovertClient struct {
	Name       string   `toml:"name"`
	SecretFile string   `toml:"secret_file"`
	Allow      []string `toml:"allow"`
	Duration   string   `toml:"duration"`
}

type rawFwknop struct {
	AccessFile      string `toml:"access_file"`
	Port            *int   `toml:"port"`
	MaxPacketAge    string `toml:"max_packet_age"`
	Forwarding      bool   `toml:"forwarding"`
	LocalNAT        bool   `toml:"local_nat"`
	SNAT            bool   `toml:"snat"`
	SNATTranslateIP string `toml:"snat_translate_ip"`
	Grant           any    `toml:"grant"`
	Idle            string `toml:"idle"`
}

type rawKnock struct {
	MaxTracked *int `toml:"max_tracked"`
}

type rawDoor struct {
	Name             string   `toml:"name"`
	Sequence         []string `toml:"sequence"`
	OneTimeSequences string   `toml:"one_time_sequences"`
	SecretFile       string   `toml:"secret_file"`
	Period           string   `toml:"period"`
	Length           *int     `toml:"length"`
	PortRange        string   `toml:"port_range"`
	Protocol         string   `toml:"protocol"`
	SeqTimeout       string   `toml:"seq_timeout"`
	TCPFlags         *string  `toml:"tcp_flags"`
	Target           string   `toml:"target"`
	Open             []string `toml:"open"`
	Duration         string   `toml:"duration"`
	StartCommand     string   `toml:"start_command"`
	StartCommand6    *string  `toml:"start_command_6"`
	StopCommand      string   `toml:"stop_command"`
	StopCommand6     *string  `toml:"stop_command_6"`
	CmdTimeout       string   `toml:"cmd_timeout"`
	Grant            any      `toml:"grant"`
	Idle             string   `toml:"idle"`
}

type rawSPA struct {
	Port          *int     `toml:"port"`
	MaxSkew       string   `toml:"max_skew"`
	Destinations  []string `toml:"destinations"`
	SourcePrefix6 *int     `toml:"source_prefix6"`
	Workers       *int     `toml:"workers"`
}

type rawFirewall struct {
	Backend string `toml:"backend"`
	OnExit  string `toml:"on_exit"`
}

type rawClient struct {
	Name            string   `toml:"name"`
	PublicKey       string   `toml:"public_key"`
	Allow           []string `toml:"allow"`
	MaxDuration     string   `toml:"max_duration"`
	DefaultDuration string   `toml:"default_duration"`
	AllowSource     bool     `toml:"allow_source"`
	Forward         []string `toml:"forward"`
	Grant           any      `toml:"grant"` // "once" or {connections = N}
	Idle            string   `toml:"idle"`
}

// Error and Errors are the configuration errors every reader returns.
type (
	Error  = conferr.Error
	Errors = conferr.Errors
)

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse validates data, which came from the file named path.
func Parse(path string, data []byte) (*Config, error) {
	var raw rawConfig
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, DecodeErrorFor(path, err, raw)
	}
	v := validator{file: path, lines: keyLines(data)}
	cfg := v.validate(&raw)
	if len(v.errs) > 0 {
		return nil, v.errs
	}
	cfg.Path = path
	return cfg, nil
}

type validator struct {
	file  string
	lines map[string]int
	errs  Errors
}

// fail records an error at key; a key missing from the file is reported at
// the line of the nearest enclosing table that is there.
func (v *validator) fail(key, format string, args ...any) {
	line := 0
	for k := key; k != ""; {
		if l, ok := v.lines[k]; ok {
			line = l
			break
		}
		i := strings.LastIndexAny(k, ".")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	// Show array indices 1-based, as a person counts [[client]] tables.
	shown := arrayIndex.ReplaceAllStringFunc(key, func(m string) string {
		var n int
		fmt.Sscanf(m, "[%d]", &n)
		return fmt.Sprintf("[%d]", n+1)
	})
	v.errs = append(v.errs, &Error{File: v.file, Line: line, Key: shown, Msg: fmt.Sprintf(format, args...)})
}

var (
	arrayIndex = regexp.MustCompile(`\[\d+\]`)
	clientName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)
)

func (v *validator) duration(key, s string, def time.Duration) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		v.fail(key, "%q is not a duration (such as \"30s\" or \"5m\")", s)
	case d < time.Second:
		v.fail(key, "%q: must be at least 1s", s)
	case d%time.Second != 0:
		v.fail(key, "%q: must be whole seconds", s)
	default:
		return d
	}
	return def
}

// interfaces reads interface = "eth0" or interface = ["eth0", "wg0"].
func (v *validator) interfaces(raw any) []string {
	var names []string
	switch x := raw.(type) {
	case nil:
	case string:
		if x != "" {
			names = []string{x}
		}
	case []any:
		for _, e := range x {
			s, ok := e.(string)
			if !ok || s == "" {
				v.fail("interface", "%v: want interface names", e)
				return nil
			}
			if !slices.Contains(names, s) {
				names = append(names, s)
			}
		}
	default:
		v.fail("interface", "%v: want a name or a list of names", raw)
	}
	for _, n := range names {
		if len(n) > 15 || strings.ContainsAny(n, "/ \t,") {
			v.fail("interface", "%q: not an interface name", n)
		}
	}
	return names
}

func (v *validator) validate(raw *rawConfig) *Config {
	cfg := &Config{
		Interfaces:     v.interfaces(raw.Interface),
		Capture:        cmp.Or(raw.Capture, "afpacket"),
		PrivateKeyFile: raw.PrivateKeyFile,
		StateDir:       cmp.Or(raw.StateDir, DefaultStateDir),
		MetricsListen:  raw.MetricsListen,
		AnyDestination: raw.AnyDestination,
		LogFormat:      cmp.Or(raw.LogFormat, "text"),
	}
	if cfg.LogFormat != "text" && cfg.LogFormat != "json" {
		v.fail("log_format", "%q: want \"text\" or \"json\"", cfg.LogFormat)
	}
	v.firewall(cfg, raw.Firewall) // first: what grants may be depends on the backend
	v.knockdFile(cfg, raw.KnockdFile)
	v.doors(cfg, raw.Doors)
	v.covert(cfg, raw.Covert)
	v.fwknop(cfg, raw.Fwknop)
	cfg.MaxTracked = DefaultMaxTracked
	if raw.Knock.MaxTracked != nil {
		if n := *raw.Knock.MaxTracked; n < 16 || n > 50_000_000 {
			v.fail("knock.max_tracked", "%d: must be 16 to 50000000", n)
		} else {
			cfg.MaxTracked = n
		}
	}
	v.capture(cfg)
	v.ssh(cfg, raw.SSH)
	if cfg.PrivateKeyFile == "" && (len(raw.Clients) > 0 || raw.SSH != nil) {
		v.fail("private_key_file", "missing: the server key made by `postern genkey --server`")
	}
	v.metrics(cfg, raw)
	v.spa(cfg, raw.SPA)
	if len(raw.Clients) == 0 && len(cfg.Doors) == 0 && raw.KnockdFile == "" && raw.Fwknop == nil && len(raw.Covert) == 0 && raw.SSH == nil {
		v.fail("client", "no [[client]], [ssh], [[door]], knockd_file, [fwknop] or [[covert]]: nobody could knock")
	}
	v.clients(cfg, raw.Clients)
	v.gateway(cfg, raw.Gateway)
	if cfg.Gateway.Published && !cfg.Firewall.Backend.ForwardByOriginalPort() {
		v.fail("gateway.published", "needs firewall.backend = \"nftables\": only conntrack knows the port a connection had before someone else's DNAT")
	}
	return cfg
}

// gateway reads [gateway].
func (v *validator) gateway(cfg *Config, raw rawGateway) {
	cfg.Gateway.Published = raw.Published
	for _, s := range raw.Protect {
		f, err := ParseForward(s)
		if err != nil {
			v.fail("gateway.protect", "%v", err)
			continue
		}
		if f.External != 0 || f.Masquerade || f.SNAT.IsValid() {
			v.fail("gateway.protect", "%q: list destinations only (HOST:PROTO/PORT)", s)
			continue
		}
		cfg.Gateway.Protect = append(cfg.Gateway.Protect, policy.Destination{Addr: f.To, Port: f.Port})
	}
}

// ParseForward reads a forwarded destination: HOST:PROTO/PORT, then
// optionally "via PORT" (DNAT from this host's PORT) and "masquerade" or
// "snat ADDRESS". An IPv6 HOST is written in brackets.
func ParseForward(s string) (policy.Forward, error) {
	fs := strings.Fields(s)
	bad := func(why string) (policy.Forward, error) {
		return policy.Forward{}, fmt.Errorf("%q: %s (want HOST:PROTO/PORT [via PORT] [masquerade | snat ADDRESS])", s, why)
	}
	if len(fs) == 0 {
		return bad("empty")
	}
	var f policy.Forward
	to, rest, err := policy.SplitHost(fs[0])
	if err != nil || !to.IsGlobalUnicast() {
		return bad("the host must be a unicast IP address, an IPv6 one in brackets")
	}
	f.To = to
	if f.Port, err = port.Parse(rest); err != nil {
		return bad(err.Error())
	}
	for rest := fs[1:]; len(rest) > 0; {
		switch {
		case rest[0] == "via" && len(rest) > 1 && f.External == 0:
			n, err := strconv.ParseUint(rest[1], 10, 16)
			if err != nil || n == 0 {
				return bad("via takes a port number")
			}
			f.External, rest = uint16(n), rest[2:]
		case rest[0] == "masquerade" && !f.SNAT.IsValid() && !f.Masquerade:
			f.Masquerade, rest = true, rest[1:]
		case rest[0] == "snat" && len(rest) > 1 && !f.SNAT.IsValid() && !f.Masquerade:
			sa, err := netip.ParseAddr(rest[1])
			if err != nil || !sa.Unmap().IsGlobalUnicast() || sa.Unmap().Is4() != f.To.Is4() {
				return bad("snat takes a unicast address of the destination's family")
			}
			f.SNAT, rest = sa.Unmap(), rest[2:]
		default:
			return bad(fmt.Sprintf("unexpected %q", rest[0]))
		}
	}
	return f, nil
}

// UsesGateway reports whether grants may go through this host to others
// (or through a NAT of its own): the firewall then installs its forward
// path and translations.
func (c *Config) UsesGateway() bool {
	if c.Gateway.Published || len(c.Gateway.Protect) > 0 || c.Fwknop != nil && (c.Fwknop.NAT.Forwarding || c.Fwknop.NAT.LocalNAT) {
		return true
	}
	return slices.ContainsFunc(c.Clients, func(cl Client) bool { return len(cl.Forward) > 0 })
}

// Forwarded returns every destination behind this host that postern
// closes: those clients may be granted, FORCE_NAT destinations and
// [gateway] protect.
func (c *Config) Forwarded() []policy.Destination {
	var out []policy.Destination
	add := func(d policy.Destination) {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	for _, cl := range c.Clients {
		for _, f := range cl.Forward {
			add(policy.Destination{Addr: f.To, Port: f.Port})
		}
	}
	if c.Fwknop != nil {
		for _, st := range c.Fwknop.Stanzas {
			if st.ForceNAT.IsValid() && !st.ForceNAT.Addr().IsUnspecified() {
				for _, p := range []port.Protocol{port.TCP, port.UDP} {
					add(policy.Destination{Addr: st.ForceNAT.Addr(), Port: port.Spec{Proto: p, Num: st.ForceNAT.Port()}})
				}
			}
		}
	}
	for _, d := range c.Gateway.Protect {
		add(d)
	}
	return out
}

// knockdFile reads a knockd.conf; its doors join the [[door]]s.
func (v *validator) knockdFile(cfg *Config, path string) {
	if path == "" {
		return
	}
	kc, err := knock.ReadKnockdConf(path)
	if err != nil {
		// Errors inside the knockd file name their own file and line.
		v.fail("knockd_file", "%v", err)
		return
	}
	cfg.Knockd = kc
	cfg.Doors = append(cfg.Doors, kc.Doors...)
	if len(cfg.Interfaces) == 0 {
		// knockd's rule: the file's Interface, else eth0.
		cfg.Interfaces = []string{cmp.Or(kc.Interface, "eth0")}
	}
}

func (v *validator) fwknop(cfg *Config, raw *rawFwknop) {
	if raw == nil {
		return
	}
	f := &Fwknop{AccessFile: raw.AccessFile, Port: DefaultSPAPort}
	if f.AccessFile == "" {
		v.fail("fwknop.access_file", "missing: the fwknopd access.conf to read")
	} else if ss, err := fko.ReadAccessWarn(f.AccessFile, func(w string) { cfg.Warnings = append(cfg.Warnings, w) }); err != nil {
		v.fail("fwknop.access_file", "%v", err)
	} else {
		f.Stanzas = ss
	}
	if raw.Port != nil {
		if p := *raw.Port; p < 1 || p > 65535 {
			v.fail("fwknop.port", "%d: must be 1 to 65535", p)
		} else {
			f.Port = uint16(p)
		}
	}
	f.MaxPacketAge = v.duration("fwknop.max_packet_age", raw.MaxPacketAge, DefaultMaxPacketAge)
	f.Lifetime = v.lifetime(func(k string) string { return "fwknop." + k }, raw.Grant, raw.Idle)
	f.NAT = fko.NATOptions{Forwarding: raw.Forwarding, LocalNAT: raw.LocalNAT, SNAT: raw.SNAT}
	if raw.SNATTranslateIP != "" {
		if a, err := netip.ParseAddr(raw.SNATTranslateIP); err != nil || !a.IsGlobalUnicast() {
			v.fail("fwknop.snat_translate_ip", "%q: want the address forwarded traffic leaves with", raw.SNATTranslateIP)
		} else {
			f.NAT.SNATTranslateIP = a.Unmap()
		}
	}
	for _, st := range f.Stanzas {
		if st.NATLine > 0 && !raw.Forwarding && !raw.LocalNAT {
			// fwknopd refuses to start the same way.
			v.fail("fwknop.access_file", "%s:%d: FORCE_NAT, FORCE_SNAT and FORCE_MASQUERADE need [fwknop] forwarding = true (or local_nat = true)",
				st.NATFile, st.NATLine)
		}
	}
	cfg.Fwknop = f
}

// metrics checks the metrics endpoint: it names clients and shows that
// postern runs, so it stays on loopback unless the file says otherwise,
// and then it may ask for a bearer token.
func (v *validator) metrics(cfg *Config, raw *rawConfig) {
	if raw.MetricsToken != "" {
		tok, err := spa.ReadSecretFile(raw.MetricsToken)
		switch tok = strings.TrimSpace(tok); {
		case err != nil:
			v.fail("metrics_token_file", "%v", err)
		case len(tok) < 16:
			v.fail("metrics_token_file", "%s: a token of at least 16 characters", raw.MetricsToken)
		}
		cfg.MetricsToken = tok
	}
	if cfg.MetricsListen == "" {
		return
	}
	host, _, err := net.SplitHostPort(cfg.MetricsListen)
	if err != nil {
		v.fail("metrics_listen", "%q: want host:port, such as \"127.0.0.1:9101\"", cfg.MetricsListen)
		return
	}
	a, err := netip.ParseAddr(host)
	loopback := host == "localhost" || err == nil && a.IsLoopback()
	if !loopback && !raw.MetricsPublic {
		v.fail("metrics_listen", "%q is not a loopback address: the endpoint has no authentication of its own and names "+
			"clients; set metrics_allow_public = true (with metrics_token_file) to serve it there", cfg.MetricsListen)
	}
}

// capture checks the capture mode against the interfaces and doors.
func (v *validator) capture(cfg *Config) {
	cfg.Interface = strings.Join(cfg.Interfaces, ",")
	if len(cfg.Interfaces) > 1 && slices.Contains(cfg.Interfaces, "any") {
		v.fail("interface", "\"any\" already means every interface: list names, or \"any\" alone")
	}
	switch cfg.Capture {
	case "afpacket":
		if cfg.Interface == "" {
			v.fail("interface", "missing: name the interface knocks arrive on (or \"any\")")
		}
	case "udp":
		if len(cfg.Doors) > 0 || len(cfg.Covert) > 0 {
			v.fail("capture", "\"udp\" sees only UDP datagrams: [[door]]s and [[covert]] doors need \"afpacket\"")
		}
	default:
		v.fail("capture", "%q: want \"afpacket\" or \"udp\"", cfg.Capture)
	}
}

func (v *validator) spa(cfg *Config, raw rawSPA) {
	cfg.SPA.Port = DefaultSPAPort
	if raw.Port != nil {
		if p := *raw.Port; p < 1 || p > 65535 {
			v.fail("spa.port", "%d: must be 1 to 65535", p)
		} else {
			cfg.SPA.Port = uint16(p)
		}
	}
	cfg.SPA.MaxSkew = v.duration("spa.max_skew", raw.MaxSkew, DefaultMaxSkew)
	cfg.SPA.SourcePrefix6 = 64
	if raw.SourcePrefix6 != nil {
		if n := *raw.SourcePrefix6; n < 32 || n > 128 {
			v.fail("spa.source_prefix6", "%d: want 32 to 128 (64: one limit per /64)", n)
		} else {
			cfg.SPA.SourcePrefix6 = n
		}
	}
	if raw.Workers != nil {
		if n := *raw.Workers; n < 1 || n > 256 {
			v.fail("spa.workers", "%d: want 1 to 256 (leave it out for one per core)", n)
		} else {
			cfg.SPA.Workers = n
		}
	}
	for _, d := range raw.Destinations {
		a, err := netip.ParseAddr(d)
		if err != nil {
			v.fail("spa.destinations", "%q is not an IP address", d)
			continue
		}
		cfg.SPA.Destinations = append(cfg.SPA.Destinations, a.Unmap())
	}
}

func (v *validator) firewall(cfg *Config, raw rawFirewall) {
	m, ok := mode.Parse(cmp.Or(raw.Backend, string(mode.Default)))
	if !ok {
		v.fail("firewall.backend", "%q: want \"nftables\", \"iptables\" or \"none\"", raw.Backend)
	}
	cfg.Firewall.Backend = m
	switch raw.OnExit {
	case "", "keep":
	case "remove":
		cfg.Firewall.RemoveOnExit = true
	default:
		v.fail("firewall.on_exit", "%q: want \"keep\" (grants expire on their own) or \"remove\"", raw.OnExit)
	}
}

// clients reads the [[client]]s: unique names and keys, what each may
// open, for how long; none may open the knock port.
func (v *validator) clients(cfg *Config, raw []rawClient) {
	names := map[string]bool{}
	keys := map[spa.ClientPublicKey]string{}
	for i, rc := range raw {
		at := func(k string) string { return fmt.Sprintf("client[%d].%s", i, k) }
		c := Client{Name: rc.Name, AllowSource: rc.AllowSource}
		switch {
		case rc.Name == "":
			v.fail(at("name"), "missing")
		case !clientName.MatchString(rc.Name):
			v.fail(at("name"), "%q: use letters, digits, '.', '_', '@' and '-' (at most 64)", rc.Name)
		case names[rc.Name]:
			v.fail(at("name"), "%q is used by another client", rc.Name)
		}
		names[rc.Name] = true
		if rc.PublicKey == "" {
			v.fail(at("public_key"), "missing: the client's `postern pubkey` output")
		} else if k, err := spa.ParseClientPublicKey(rc.PublicKey); err != nil {
			v.fail(at("public_key"), "%v", err)
		} else if other, dup := keys[k]; dup {
			v.fail(at("public_key"), "same key as client %q", other)
		} else {
			keys[k] = rc.Name
			c.PublicKey = k
		}
		if len(rc.Allow) == 0 && len(rc.Forward) == 0 {
			v.fail(at("allow"), "missing: list what this client may open, such as [\"tcp/22\"]")
		}
		for _, s := range rc.Forward {
			f, err := ParseForward(s)
			if err != nil {
				v.fail(at("forward"), "%v", err)
				continue
			}
			c.Forward = append(c.Forward, f)
		}
		for _, s := range rc.Allow {
			p, err := port.Parse(s)
			if err != nil {
				v.fail(at("allow"), "%v", err)
				continue
			}
			if !slices.Contains(c.Allow, p) {
				c.Allow = append(c.Allow, p)
			}
			if p.Proto == port.UDP && p.Num == cfg.SPA.Port {
				v.fail("spa.port", "udp/%d is both the knock port and a port client %q may open", p.Num, c.Name)
			}
		}
		c.MaxDuration = v.duration(at("max_duration"), rc.MaxDuration, DefaultMaxDuration)
		c.DefaultDuration = v.duration(at("default_duration"), rc.DefaultDuration, min(DefaultDuration, c.MaxDuration))
		c.Lifetime = v.lifetime(at, rc.Grant, rc.Idle)
		if c.DefaultDuration > c.MaxDuration {
			v.fail(at("default_duration"), "%v is longer than max_duration %v", c.DefaultDuration, c.MaxDuration)
		}
		cfg.Clients = append(cfg.Clients, c)
	}
}

// lifetime reads grant = "once" and idle = "2m" (at names their keys). Both
// need the kernel to change a grant from the packet path, which the
// nftables backend does.
func (v *validator) lifetime(at func(string) string, grant any, idle string) policy.Lifetime {
	var l policy.Lifetime
	const want = "want \"once\" (the first connection consumes the grant), {connections = N} (N of them, 1 to %d) or leave it out"
	switch g := grant.(type) {
	case nil:
	case string:
		switch g {
		case "":
		case "once":
			l.Connections = 1
		default:
			v.fail(at("grant"), "%q: "+want, g, MaxGrantConnections)
		}
	case map[string]any:
		n, ok := g["connections"].(int64)
		if len(g) != 1 || !ok || n < 1 || n > MaxGrantConnections {
			v.fail(at("grant"), "%v: "+want, g, MaxGrantConnections)
			break
		}
		l.Connections = int(n)
	default:
		v.fail(at("grant"), "%v: "+want, g, MaxGrantConnections)
	}
	if idle != "" {
		l.Idle = v.duration(at("idle"), idle, 0)
		if l.Idle > 0 && l.Idle < time.Second {
			v.fail(at("idle"), "%v: at least 1s", l.Idle)
		}
	}
	if l.Connections > 0 && l.Idle > 0 {
		v.fail(at("idle"), "grant (counted connections) and idle exclude each other: a consumed grant has nothing left to keep")
	}
	return l
}

// Lifetimes returns the most connections a counted grant of the
// configuration allows (0: none is counted) and every idle duration it
// uses: the kernel sets the firewall needs.
func (c *Config) Lifetimes() (connections int, idle []time.Duration) {
	add := func(l policy.Lifetime) {
		connections = max(connections, l.Connections)
		if l.Idle > 0 && !slices.Contains(idle, l.Idle) {
			idle = append(idle, l.Idle)
		}
	}
	for _, cl := range c.Clients {
		add(cl.Lifetime)
	}
	for _, d := range c.Doors {
		add(d.Lifetime)
	}
	if c.Fwknop != nil {
		add(c.Fwknop.Lifetime)
	}
	if c.SSH != nil {
		for _, id := range c.SSH.Identities {
			add(id.Lifetime)
		}
	}
	slices.Sort(idle)
	return connections, idle
}

// MaxGrantConnections bounds grant = {connections = N}: one kernel set
// and one rule per connection.
const MaxGrantConnections = 8

// Protected returns every port a client or a door may open: the ports
// postern closes.
func (c *Config) Protected() []port.Spec {
	var out []port.Spec
	add := func(ps []port.Spec) {
		for _, p := range ps {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	for _, cl := range c.Clients {
		add(cl.Allow)
	}
	for _, d := range c.Doors {
		add(d.Open)
	}
	if c.Fwknop != nil {
		for _, st := range c.Fwknop.Stanzas {
			add(st.OpenPorts)
		}
	}
	for _, cv := range c.Covert {
		for _, cl := range cv.Clients {
			add(cl.Allow)
		}
	}
	if c.SSH != nil {
		for _, id := range c.SSH.Identities {
			add(id.Allow)
		}
	}
	return out
}
