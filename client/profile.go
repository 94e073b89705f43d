package client

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/postern/postern/config"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// Profile is a door a client knocks on by name (postern knock --door NAME).
type Profile struct {
	Name     string
	Host     string
	Hits     []knock.Hit     // a fixed sequence…
	Rotating *knock.Rotating // …or a rotating one
	Delay    time.Duration
}

type rawProfiles struct {
	// STUN servers (host:port) for --allow auto, unless a profile names
	// its own.
	STUNServers []string           `toml:"stun_servers"`
	Doors       []rawProfile       `toml:"door"`
	Covert      []rawCovertProfile `toml:"covert"`
	SPA         []rawSPAProfile    `toml:"spa"`
}

type rawSPAProfile struct {
	Name      string   `toml:"name"`
	Host      string   `toml:"host"`
	KeyFile   string   `toml:"key_file,omitempty"`
	SSHKey    string   `toml:"ssh_key,omitempty"`   // an OpenSSH private key file instead of key_file
	SSHAgent  string   `toml:"ssh_agent,omitempty"` // a key in ssh-agent (fingerprint or comment; "*": its only key)
	ServerKey string   `toml:"server_key"`
	Port      int      `toml:"port,omitempty"`
	Open      []string `toml:"open,omitempty"`
	Duration  string   `toml:"duration,omitempty"`
	Allow     string   `toml:"allow,omitempty"`
	Wait      string   `toml:"wait,omitempty"`
	STUN      []string `toml:"stun_servers,omitempty"`
	Family    string   `toml:"family,omitempty"` // "ipv4", "ipv6"; default: every family the host has
	TokenKey  string   `toml:"token_key,omitempty"`
	// CloseOnExit: postern ssh and postern proxy close the door when the
	// session ends (default true).
	CloseOnExit *bool `toml:"close_on_exit,omitempty"`
}

// SPAProfile is a server to knock with postern SPA, by name or host
// (postern knock --profile, postern ssh, postern proxy).
type SPAProfile struct {
	Name, Host string
	KeyFile    string
	SSHKey     string // OpenSSH private key file, instead of KeyFile
	SSHAgent   string // ssh-agent key (fingerprint or comment, "*": the only one), instead of KeyFile
	ServerKey  string // the key itself or a file holding it
	Port       uint16
	Open       []port.Spec // default tcp/22
	Duration   time.Duration
	Allow      string
	STUN       []string // STUN servers for Allow "auto"
	Network    string   // "udp4" or "udp6" from family; "" knocks every family
	TokenKey   string   // postern token's output: pre-authenticated knocks
	// CloseOnExit: postern ssh and postern proxy send a close request for
	// what they opened when the session ends. Connections that are up
	// survive it; the next session knocks again.
	CloseOnExit bool
	// Wait is how long to let the grant land before connecting, so the
	// first SYN is not dropped (a dropped SYN costs a second).
	Wait time.Duration
}

// LoadSPAProfile returns the [[spa]] profile called name, or else the first
// whose host is name; nil when there is none (or no file).
func LoadSPAProfile(path, name string) (*SPAProfile, error) {
	raw, err := readProfiles(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var found *rawSPAProfile
	for i := range raw.SPA {
		if raw.SPA[i].Name == name {
			found = &raw.SPA[i]
			break
		}
	}
	for i := range raw.SPA {
		if found == nil && raw.SPA[i].Host == name {
			found = &raw.SPA[i]
		}
	}
	if found == nil {
		return nil, nil
	}
	where := fmt.Sprintf("%s: spa %q", path, found.Name)
	p := &SPAProfile{Name: found.Name, Host: found.Host, KeyFile: expandHome(found.KeyFile), SSHKey: expandHome(found.SSHKey),
		SSHAgent: found.SSHAgent, ServerKey: expandHome(found.ServerKey),
		Port: 62201, Allow: found.Allow, Wait: 50 * time.Millisecond, STUN: found.STUN,
		CloseOnExit: found.CloseOnExit == nil || *found.CloseOnExit, TokenKey: found.TokenKey}
	if len(p.STUN) == 0 {
		p.STUN = raw.STUNServers
	}
	switch strings.ToLower(found.Family) {
	case "", "any":
	case "ipv4", "4", "inet":
		p.Network = "udp4"
	case "ipv6", "6", "inet6":
		p.Network = "udp6"
	default:
		return nil, fmt.Errorf("%s: family %q: want \"ipv4\" or \"ipv6\" (or leave it out: every family the host has)", where, found.Family)
	}
	if found.Port != 0 {
		if found.Port < 1 || found.Port > 65535 {
			return nil, fmt.Errorf("%s: port %d", where, found.Port)
		}
		p.Port = uint16(found.Port)
	}
	for _, o := range found.Open {
		sp, err := port.Parse(o)
		if err != nil {
			return nil, fmt.Errorf("%s: open: %w", where, err)
		}
		p.Open = append(p.Open, sp)
	}
	if len(p.Open) == 0 {
		p.Open = []port.Spec{{Proto: port.TCP, Num: 22}}
	}
	for _, d := range []struct {
		s   string
		dst *time.Duration
		key string
	}{{found.Duration, &p.Duration, "duration"}, {found.Wait, &p.Wait, "wait"}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", where, d.key, err)
		}
		*d.dst = v
	}
	if n := btoi(p.KeyFile != "") + btoi(p.SSHKey != "") + btoi(p.SSHAgent != ""); n != 1 {
		return nil, fmt.Errorf("%s: give one of key_file, ssh_key and ssh_agent", where)
	}
	if p.Host == "" || p.ServerKey == "" {
		return nil, fmt.Errorf("%s: needs host and server_key", where)
	}
	return p, nil
}

type rawCovertProfile struct {
	Name       string `toml:"name"`
	Host       string `toml:"host"`
	Port       int    `toml:"port"`
	Open       string `toml:"open"`
	SecretFile string `toml:"secret_file"`
}

// CovertProfile is a covert door in the client config.
type CovertProfile struct {
	Host       string
	Port       uint16
	Open       string
	SecretFile string
}

// LoadCovertProfile returns the [[covert]] profile called name from path,
// or nil when there is no such file or profile.
func LoadCovertProfile(path, name string) (*CovertProfile, error) {
	raw, err := readProfiles(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, c := range raw.Covert {
		if c.Name == name {
			if c.Port < 0 || c.Port > 65535 {
				return nil, fmt.Errorf("%s: covert %q: port %d", path, name, c.Port)
			}
			return &CovertProfile{Host: c.Host, Port: uint16(c.Port), Open: c.Open, SecretFile: c.SecretFile}, nil
		}
	}
	return nil, nil
}

type rawProfile struct {
	Name       string   `toml:"name"`
	Host       string   `toml:"host"`
	Sequence   []string `toml:"sequence"`
	Delay      string   `toml:"delay"`
	SecretFile string   `toml:"secret_file"`
	Period     string   `toml:"period"`
	Length     int      `toml:"length"`
	PortRange  string   `toml:"port_range"`
	Protocol   string   `toml:"protocol"`
}

// DefaultProfiles is the client configuration file: client.toml under
// $XDG_CONFIG_HOME/postern (~/.config/postern).
func DefaultProfiles() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "postern", "client.toml")
}

// readProfiles decodes a client.toml strictly, errors naming file and line.
func readProfiles(path string) (*rawProfiles, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var raw rawProfiles
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, config.DecodeErrorFor(path, err, raw)
	}
	return &raw, nil
}

// LoadSTUNServers returns client.toml's stun_servers (none without a file).
func LoadSTUNServers(path string) ([]string, error) {
	raw, err := readProfiles(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return raw.STUNServers, nil
}

// LoadProfile reads path and returns the door called name.
func LoadProfile(path, name string) (*Profile, error) {
	raw, err := readProfiles(path)
	if err != nil {
		return nil, err
	}
	for _, rp := range raw.Doors {
		if rp.Name != name {
			continue
		}
		where := fmt.Sprintf("%s: door %q", path, name)
		p := &Profile{Name: name, Host: rp.Host}
		if rp.Delay != "" {
			if p.Delay, err = time.ParseDuration(rp.Delay); err != nil {
				return nil, fmt.Errorf("%s: delay: %w", where, err)
			}
		}
		for _, s := range rp.Sequence {
			h, err := knock.ParseHit(s)
			if err != nil {
				return nil, fmt.Errorf("%s: sequence: %w", where, err)
			}
			p.Hits = append(p.Hits, h)
		}
		if rp.SecretFile != "" {
			r, err := NewRotating(rp.SecretFile, rp.Period, rp.Length, rp.PortRange, rp.Protocol)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			p.Rotating = r
		}
		if (len(p.Hits) == 0) == (p.Rotating == nil) {
			return nil, fmt.Errorf("%s: give either sequence or secret_file", where)
		}
		return p, nil
	}
	return nil, fmt.Errorf("%s: no door called %q", path, name)
}

// NewRotating reads a rotating door's settings; empty values take the
// server's defaults, so the two sides agree unless configured otherwise.
func NewRotating(secretFile, period string, length int, portRange, protocol string) (*knock.Rotating, error) {
	secret, err := spa.ReadSecretFile(secretFile)
	if err != nil {
		return nil, err
	}
	r := &knock.Rotating{Secret: []byte(strings.TrimSpace(secret)), Period: config.DefaultPeriod,
		Length: config.DefaultLength, Proto: port.TCP}
	if period != "" {
		if r.Period, err = time.ParseDuration(period); err != nil {
			return nil, fmt.Errorf("period: %w", err)
		}
	}
	if length != 0 {
		r.Length = length
	}
	if portRange == "" {
		portRange = config.DefaultPortRange
	}
	if r.Lo, r.Hi, err = config.ParsePortRange(portRange); err != nil {
		return nil, fmt.Errorf("port_range: %w", err)
	}
	switch strings.ToLower(protocol) {
	case "", "tcp":
	case "udp":
		r.Proto = port.UDP
	default:
		return nil, fmt.Errorf("protocol %q: want tcp or udp", protocol)
	}
	d := knock.Door{Name: "check", Rotating: r, SeqTimeout: time.Second, StartCommand: "x"}
	if errs := d.Validate(); len(errs) > 0 {
		return nil, errs[0]
	}
	return r, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
