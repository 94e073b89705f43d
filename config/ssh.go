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
}

type rawPrincipal struct {
	Name            string   `toml:"name"`
	Allow           []string `toml:"allow"`
	MaxDuration     string   `toml:"max_duration"`
	DefaultDuration string   `toml:"default_duration"`
	AllowSource     bool     `toml:"allow_source"`
}

// ssh reads the [ssh] table and the OpenSSH files it names.
func (v *validator) ssh(cfg *Config, raw *rawSSH) {
	if raw == nil {
		return
	}
	t := &spa.SSHTrust{Keys: map[string]spa.SSHKey{}, CAs: map[string]bool{}, RevokedSerials: map[uint64]bool{},
		RevokedKeys: map[string]bool{}}
	s := &SSH{Trust: t}
	maxD := v.duration("ssh.max_duration", raw.MaxDuration, DefaultMaxDuration)
	defD := v.duration("ssh.default_duration", raw.DefaultDuration, min(DefaultDuration, maxD))
	defAllow := v.portList("ssh.allow", raw.Allow)
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
				AllowSource: raw.AllowSource}
			if id.Name == "" || strings.ContainsAny(id.Name, " \t") {
				id.Name = ssh.FingerprintSHA256(pub)
			}
			key := spa.SSHKey{}
			restrict := false
			for _, o := range opts {
				name, val, _ := strings.Cut(o, "=")
				val = strings.Trim(val, `"`)
				switch strings.ToLower(name) {
				case "from":
					key.From = strings.Split(val, ",")
				case "restrict":
					restrict = true
				case "postern-allow":
					if id.Allow, err = port.ParseList(val); err != nil {
						return &conferr.Error{File: file, Line: line, Key: "postern-allow", Msg: err.Error()}
					}
					restrict = false
				}
			}
			if restrict {
				id.Allow = nil // restrict: nothing but what postern-allow names
			}
			for _, other := range s.Identities {
				if other.Name == spa.SSHKeyIdentity(id.Name) {
					id.Name = ssh.FingerprintSHA256(pub)
				}
			}
			key.Name = id.Name
			t.Keys[string(pub.Marshal())] = key
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
			pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimPrefix(text, "cert-authority ")))
			if err != nil {
				return &conferr.Error{File: file, Line: line, Key: "key", Msg: err.Error()}
			}
			t.CAs[string(pub.Marshal())] = true
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
			DefaultDuration: v.duration(at("default_duration"), rp.DefaultDuration, min(defD, m)), AllowSource: rp.AllowSource}
		if len(id.Allow) == 0 {
			v.fail(at("allow"), "missing: what this principal may open, such as [\"tcp/22\"]")
		}
		t.Principals = append(t.Principals, rp.Name)
		s.Identities = append(s.Identities, id)
	}
	if raw.RevokedKeys != "" {
		if err := readRevoked(raw.RevokedKeys, t); err != nil {
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

// readRevoked reads the revoked-keys file: one entry a line, a
// certificate serial ("serial 42"), a key fingerprint ("SHA256:…") or a key
// in authorized_keys form.
func readRevoked(path string, t *spa.SSHTrust) error {
	return eachKeyLine(path, func(file string, line int, text string) error {
		switch {
		case strings.HasPrefix(text, "serial "):
			n, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(text, "serial ")), 10, 64)
			if err != nil {
				return &conferr.Error{File: file, Line: line, Key: "serial", Msg: "want serial NUMBER"}
			}
			t.RevokedSerials[n] = true
		case strings.HasPrefix(text, "SHA256:"):
			t.RevokedKeys[text] = true
		default:
			pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(text))
			if err != nil {
				return &conferr.Error{File: file, Line: line, Key: "key",
					Msg: "want \"serial N\", a SHA256: fingerprint or a public key: " + err.Error()}
			}
			t.RevokedKeys[ssh.FingerprintSHA256(pub)] = true
		}
		return nil
	})
}
