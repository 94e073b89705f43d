package config

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/postern/postern/internal/conferr"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// SSH is the [ssh] table: OpenSSH identities the server trusts.
type SSH struct {
	Trust *spa.SSHTrust
	// Identities are what each may open, for policy: one per authorized
	// key ("ssh:NAME") and one per principal ("principal:NAME").
	Identities []SSHIdentity
}

// SSHIdentity is what one SSH identity may do.
type SSHIdentity struct {
	Name                         string
	Allow                        []port.Spec
	MaxDuration, DefaultDuration time.Duration
	AllowSource                  bool
	Lifetime                     policy.Lifetime // [ssh] grant, idle: every SSH identity's
}

type rawSSH struct {
	AuthorizedKeys    string         `toml:"authorized_keys"`
	TrustedUserCAKeys string         `toml:"trusted_user_ca_keys"`
	RevokedKeys       string         `toml:"revoked_keys"`
	Allow             []string       `toml:"allow"`
	MaxDuration       string         `toml:"max_duration"`
	DefaultDuration   string         `toml:"default_duration"`
	AllowSource       bool           `toml:"allow_source"`
	Principals        []rawPrincipal `toml:"principal"`
	Grant             any            `toml:"grant"`
	Idle              string         `toml:"idle"`
}

type rawPrincipal struct {
	Name            string   `toml:"name"`
	Allow           []string `toml:"allow"`
	MaxDuration     string   `toml:"max_duration"`
	DefaultDuration string   `toml:"default_duration"`
	AllowSource     bool     `toml:"allow_source"`
}

// ssh reads the [ssh] table and the OpenSSH files it names.
//
// Long on purpose: the [ssh] table and the OpenSSH files it names, read in one pass.
func (v *validator) ssh(cfg *Config, raw *rawSSH) {
	if raw == nil {
		return
	}
	var err error
	t := &spa.SSHTrust{Keys: map[string]spa.SSHKey{}, CAs: map[string]spa.SSHCA{}}
	s := &SSH{Trust: t}
	maxD := v.duration("ssh.max_duration", raw.MaxDuration, DefaultMaxDuration)
	defD := v.duration("ssh.default_duration", raw.DefaultDuration, min(DefaultDuration, maxD))
	defAllow := v.portList("ssh.allow", raw.Allow)
	lifetime := v.lifetime(func(k string) string { return "ssh." + k }, raw.Grant, raw.Idle)
	if raw.AuthorizedKeys == "" && raw.TrustedUserCAKeys == "" {
		v.fail("ssh", "give authorized_keys, trusted_user_ca_keys or both")
	}
	if raw.AuthorizedKeys != "" {
		err := eachKeyLine(raw.AuthorizedKeys, func(file string, line int, text string) error {
			pub, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(text))
			if err != nil {
				return &conferr.Error{File: file, Line: line, Key: "key", Msg: err.Error()}
			}
			id := SSHIdentity{Name: strings.TrimSpace(comment), Allow: defAllow, MaxDuration: maxD, DefaultDuration: defD,
				AllowSource: raw.AllowSource, Lifetime: lifetime}
			if id.Name == "" || strings.ContainsAny(id.Name, " \t") {
				id.Name = ssh.FingerprintSHA256(pub)
			}
			o, err := keyOptions(file, line, opts, false)
			if err != nil {
				return err
			}
			if o.allow != nil {
				id.Allow = o.allow
			} else if o.restrict {
				id.Allow = nil // restrict: nothing but what postern-allow names
			}
			for _, other := range s.Identities {
				if other.Name == spa.SSHKeyIdentity(id.Name) {
					id.Name = ssh.FingerprintSHA256(pub)
				}
			}
			t.Keys[string(pub.Marshal())] = spa.SSHKey{Name: id.Name, From: o.from, Expires: o.expires,
				VerifyRequired: o.verifyRequired}
			id.Name = spa.SSHKeyIdentity(id.Name)
			s.Identities = append(s.Identities, id)
			return nil
		})
		if err != nil {
			v.fail("ssh.authorized_keys", "%v", err)
		}
	}
	if raw.TrustedUserCAKeys != "" {
		err := eachKeyLine(raw.TrustedUserCAKeys, func(file string, line int, text string) error {
			pub, _, opts, _, err := ssh.ParseAuthorizedKey([]byte(text))
			if err != nil {
				return &conferr.Error{File: file, Line: line, Key: "key", Msg: err.Error()}
			}
			o, err := keyOptions(file, line, opts, true)
			if err != nil {
				return err
			}
			t.CAs[string(pub.Marshal())] = spa.SSHCA{Principals: o.principals, From: o.from, Expires: o.expires}
			return nil
		})
		if err != nil {
			v.fail("ssh.trusted_user_ca_keys", "%v", err)
		}
		if len(raw.Principals) == 0 {
			v.fail("ssh.principal", "trusted_user_ca_keys needs [[ssh.principal]] tables: what each principal may open")
		}
	}
	for i, rp := range raw.Principals {
		at := func(k string) string { return fmt.Sprintf("ssh.principal[%d].%s", i, k) }
		if rp.Name == "" {
			v.fail(at("name"), "missing")
			continue
		}
		m := v.duration(at("max_duration"), rp.MaxDuration, maxD)
		id := SSHIdentity{Name: spa.SSHPrincipalIdentity(rp.Name), Allow: v.portList(at("allow"), rp.Allow), MaxDuration: m,
			DefaultDuration: v.duration(at("default_duration"), rp.DefaultDuration, min(defD, m)), AllowSource: rp.AllowSource,
			Lifetime: lifetime}
		if len(id.Allow) == 0 {
			v.fail(at("allow"), "missing: what this principal may open, such as [\"tcp/22\"]")
		}
		t.Principals = append(t.Principals, rp.Name)
		s.Identities = append(s.Identities, id)
	}
	if raw.RevokedKeys != "" {
		if t.Revoked, err = readRevoked(raw.RevokedKeys); err != nil {
			v.fail("ssh.revoked_keys", "%v", err)
		}
	}
	cfg.SSH = s
}

func (v *validator) portList(key string, raw []string) []port.Spec {
	var out []port.Spec
	for _, s := range raw {
		p, err := port.Parse(s)
		if err != nil {
			v.fail(key, "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// eachKeyLine calls fn for every line of an OpenSSH key file that is not
// blank or a comment.
func eachKeyLine(path string, fn func(file string, line int, text string) error) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if err := fn(path, n, text); err != nil {
			return err
		}
	}
	return sc.Err()
}

// readRevoked reads the revoked-keys file as sshd's RevokedKeys: an
// OpenSSH binary KRL (ssh-keygen -k), or text with one entry a line — a
// certificate serial ("serial 42", any CA), a key fingerprint
// ("SHA256:…") or a key in authorized_keys form. A revoked CA key revokes
// every certificate it signed.
func readRevoked(path string) (*spa.SSHRevocations, error) {
	r := &spa.SSHRevocations{}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if spa.IsKRL(data) {
		if err := r.ParseKRL(data); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return r, nil
	}
	return r, eachKeyLine(path, func(file string, line int, text string) error {
		switch {
		case strings.HasPrefix(text, "serial "):
			n, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(text, "serial ")), 10, 64)
			if err != nil {
				return &conferr.Error{File: file, Line: line, Key: "serial", Msg: "want serial NUMBER"}
			}
			r.RevokeSerial(n)
		case strings.HasPrefix(text, "SHA256:"):
			r.RevokeKey(text)
		default:
			pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(text))
			if err != nil {
				return &conferr.Error{File: file, Line: line, Key: "key",
					Msg: "want \"serial N\", a SHA256: fingerprint or a public key: " + err.Error()}
			}
			r.RevokeKey(ssh.FingerprintSHA256(pub))
		}
		return nil
	})
}

// keyLineOptions are the options of an authorized_keys or CA line that
// bear on a knock.
type keyLineOptions struct {
	from, principals []string
	expires          time.Time
	restrict         bool
	allow            []port.Spec // postern-allow=; nil: not given
	verifyRequired   bool
}

// sessionOptions govern an SSH session, not a door: sshd knows them, and
// postern accepts and ignores them so that a real authorized_keys file
// reads as it is.
var sessionOptions = map[string]bool{
	"agent-forwarding": true, "no-agent-forwarding": true, "port-forwarding": true, "no-port-forwarding": true,
	"pty": true, "no-pty": true, "user-rc": true, "no-user-rc": true, "x11-forwarding": true, "no-x11-forwarding": true,
	"command": true, "environment": true, "permitopen": true, "permitlisten": true, "tunnel": true,
}

// keyOptions reads a key line's options as sshd means them. An option
// sshd does not know, or one that means nothing on this kind of line, is
// an error naming the line, as sshd refuses such a line.
func keyOptions(file string, line int, opts []string, caLine bool) (keyLineOptions, error) {
	var o keyLineOptions
	bad := func(key, format string, args ...any) (keyLineOptions, error) {
		return o, &conferr.Error{File: file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	for _, opt := range opts {
		name, val, hasVal := strings.Cut(opt, "=")
		val = strings.Trim(val, `"`)
		name = strings.ToLower(name)
		switch {
		case name == "from" && hasVal:
			o.from = strings.Split(val, ",")
		case name == "expiry-time" && hasVal:
			t, err := parseExpiryTime(val)
			if err != nil {
				return bad("expiry-time", "%v", err)
			}
			o.expires = t
		case name == "restrict" && !hasVal:
			o.restrict = true
		case name == "postern-allow" && hasVal && !caLine:
			ps, err := port.ParseList(val)
			if err != nil {
				return bad("postern-allow", "%v", err)
			}
			o.allow = ps
		case name == "cert-authority" && !hasVal:
			if !caLine {
				return bad("cert-authority", "a certificate authority belongs in trusted_user_ca_keys, with [[ssh.principal]] tables")
			}
		case name == "principals" && hasVal:
			if !caLine {
				return bad("principals", "principals= applies to a cert-authority line (trusted_user_ca_keys)")
			}
			o.principals = strings.Split(val, ",")
		case name == "verify-required" && !hasVal && !caLine:
			o.verifyRequired = true
		case name == "no-touch-required" && !hasVal:
			return bad("no-touch-required", "not supported: postern requires the security key's touch (user presence) for every knock")
		case sessionOptions[name]:
			// An SSH session's business, not the door's.
		default:
			return bad(name, "unknown or misplaced option %q (sshd refuses such a line too)", opt)
		}
	}
	return o, nil
}

// parseExpiryTime reads expiry-time's YYYYMMDD[HHMM[SS]] in the system's
// time zone, or in UTC with a Z suffix, as sshd does.
func parseExpiryTime(s string) (time.Time, error) {
	loc := time.Local
	if strings.HasSuffix(s, "Z") || strings.HasSuffix(s, "z") {
		s, loc = s[:len(s)-1], time.UTC
	}
	layout := map[int]string{8: "20060102", 12: "200601021504", 14: "20060102150405"}[len(s)]
	if layout == "" {
		return time.Time{}, fmt.Errorf("%q: want YYYYMMDD[HHMM[SS]][Z]", s)
	}
	t, err := time.ParseInLocation(layout, s, loc)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want YYYYMMDD[HHMM[SS]][Z]", s)
	}
	return t, nil
}
