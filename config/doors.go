package config

import (
	"cmp"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/postern/postern/knock"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// doors validates the [[door]] tables into knock.Doors.
func (v *validator) doors(cfg *Config, raws []rawDoor) {
	names := map[string]bool{}
	for _, d := range cfg.Doors {
		names[d.Name] = true
	}
	for i, rd := range raws {
		at := func(k string) string { return fmt.Sprintf("door[%d].%s", i, k) }
		d := &knock.Door{
			Name: rd.Name, StartCommand: rd.StartCommand, StopCommand: rd.StopCommand,
			StartCommand6: rd.StartCommand6, StopCommand6: rd.StopCommand6,
		}
		switch {
		case rd.Name == "":
			v.fail(at("name"), "missing")
		case !clientName.MatchString(rd.Name):
			v.fail(at("name"), "%q: use letters, digits, '.', '_', '@' and '-' (at most 64)", rd.Name)
		case names[rd.Name]:
			v.fail(at("name"), "%q is used by another door", rd.Name)
		}
		names[rd.Name] = true
		for _, s := range rd.Sequence {
			h, err := knock.ParseHit(s)
			if err != nil {
				v.fail(at("sequence"), "%v", err)
				continue
			}
			d.Sequence = append(d.Sequence, h)
		}
		if rd.OneTimeSequences != "" {
			ot, err := knock.LoadOneTime(rd.OneTimeSequences)
			if err != nil {
				v.fail(at("one_time_sequences"), "%v", err)
			}
			d.OneTime = ot
		}
		if rd.SecretFile != "" {
			d.Rotating = v.rotating(at, rd)
		} else {
			for _, k := range []struct {
				key string
				set bool
			}{{"period", rd.Period != ""}, {"length", rd.Length != nil}, {"port_range", rd.PortRange != ""}, {"protocol", rd.Protocol != ""}} {
				if k.set {
					v.fail(at(k.key), "only for rotating doors (with secret_file)")
				}
			}
		}
		d.Lifetime = v.lifetime(at, rd.Grant, rd.Idle)
		d.SeqTimeout = v.duration(at("seq_timeout"), rd.SeqTimeout, DefaultDoorTimeout)
		flags := DefaultDoorFlags
		if rd.TCPFlags != nil {
			flags = *rd.TCPFlags
		}
		f, err := knock.ParseFlags(flags)
		if err != nil {
			v.fail(at("tcp_flags"), "%v", err)
		}
		d.Flags = f
		if rd.Target != "" {
			a, err := netip.ParseAddr(rd.Target)
			if err != nil {
				v.fail(at("target"), "%q is not an IP address", rd.Target)
			}
			d.Target = a.Unmap()
		}
		for _, s := range rd.Open {
			p, err := port.Parse(s)
			if err != nil {
				v.fail(at("open"), "%v", err)
				continue
			}
			d.Open = append(d.Open, p)
		}
		d.Duration = v.duration(at("duration"), rd.Duration, DefaultDuration)
		d.CmdTimeout = v.duration(at("cmd_timeout"), rd.CmdTimeout, knock.KnockdCmdTimeout)
		for _, fe := range d.Validate() {
			v.fail(at(fe.Key), "%s", fe.Msg)
		}
		cfg.Doors = append(cfg.Doors, d)
	}
}

func (v *validator) rotating(at func(string) string, rd rawDoor) *knock.Rotating {
	r := &knock.Rotating{Proto: port.TCP, Length: DefaultLength}
	secret, err := spa.ReadSecretFile(rd.SecretFile)
	if err != nil {
		v.fail(at("secret_file"), "%v", err)
	}
	r.Secret = []byte(strings.TrimSpace(secret))
	r.Period = v.duration(at("period"), rd.Period, DefaultPeriod)
	if rd.Length != nil {
		r.Length = *rd.Length
	}
	lo, hi, err := ParsePortRange(cmp.Or(rd.PortRange, DefaultPortRange))
	if err != nil {
		v.fail(at("port_range"), "%v", err)
	}
	r.Lo, r.Hi = lo, hi
	switch strings.ToLower(rd.Protocol) {
	case "", "tcp":
	case "udp":
		r.Proto = port.UDP
	default:
		v.fail(at("protocol"), "%q: want tcp or udp", rd.Protocol)
	}
	return r
}

// ParsePortRange reads "20000-39999".
func ParsePortRange(s string) (lo, hi uint16, err error) {
	a, b, ok := strings.Cut(s, "-")
	l, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if !ok || err1 != nil || err2 != nil || l == 0 || h < l {
		return 0, 0, fmt.Errorf("%q: want LOW-HIGH, such as %q", s, DefaultPortRange)
	}
	return uint16(l), uint16(h), nil
}

// covert validates the [[covert]] tables.
func (v *validator) covert(cfg *Config, raws []rawCovert) {
	ports := map[int]bool{}
	for i, rc := range raws {
		at := func(k string) string { return fmt.Sprintf("covert[%d].%s", i, k) }
		c := Covert{Name: rc.Name}
		if !clientName.MatchString(rc.Name) {
			v.fail(at("name"), "%q: missing or not letters, digits, '.', '_', '@', '-'", rc.Name)
		}
		switch {
		case rc.Port < 1 || rc.Port > 65535:
			v.fail(at("port"), "%d: must be 1 to 65535 (the closed TCP port the SYNs go to)", rc.Port)
		case ports[rc.Port]:
			v.fail(at("port"), "%d is used by another [[covert]]", rc.Port)
		default:
			c.Port = uint16(rc.Port)
		}
		ports[rc.Port] = true
		c.MaxSkew = v.duration(at("max_skew"), rc.MaxSkew, DefaultMaxSkew)
		if len(rc.Clients) == 0 {
			v.fail(at("client"), "no [[covert.client]]: nobody could knock")
		}
		for j, rcl := range rc.Clients {
			cat := func(k string) string { return fmt.Sprintf("covert[%d].client[%d].%s", i, j, k) }
			cl := CovertClient{Name: rcl.Name}
			if !clientName.MatchString(rcl.Name) {
				v.fail(cat("name"), "%q: missing or not letters, digits, '.', '_', '@', '-'", rcl.Name)
			}
			if rcl.SecretFile == "" {
				v.fail(cat("secret_file"), "missing")
			} else if secret, err := spa.ReadSecretFile(rcl.SecretFile); err != nil {
				v.fail(cat("secret_file"), "%v", err)
			} else if cl.Secret = []byte(strings.TrimSpace(secret)); len(cl.Secret) < 16 {
				v.fail(cat("secret_file"), "the secret must be at least 16 bytes")
			}
			if len(rcl.Allow) == 0 {
				v.fail(cat("allow"), "missing: what this client may open, such as [\"tcp/22\"]")
			}
			for _, s := range rcl.Allow {
				p, err := port.Parse(s)
				if err != nil || (p.Proto != port.TCP && p.Proto != port.UDP) {
					v.fail(cat("allow"), "%q: want tcp/PORT or udp/PORT", s)
					continue
				}
				cl.Allow = append(cl.Allow, p)
			}
			cl.Duration = v.duration(cat("duration"), rcl.Duration, DefaultDuration)
			c.Clients = append(c.Clients, cl)
		}
		cfg.Covert = append(cfg.Covert, c)
	}
}
