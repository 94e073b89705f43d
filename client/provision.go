package client

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/port"
)

// Provisioning URIs (docs/PROTOCOL.md §12): everything a client needs to
// knock a server except its own private key, on one line (or a QR code):
//
//	postern://knock?v=1&host=server.example.org&port=62201&server_key=…&open=tcp/22&family=ipv4&duration=30s&token_key=…
//
// A phone app or an SDK reads the same fields. The private key never
// travels in it: the importing side names (or makes) its own.
const (
	ProvisionScheme  = "postern"
	ProvisionVersion = "1"
)

// Provision is what a provisioning URI carries.
type Provision struct {
	Host      string
	Port      uint16 // 0: 62201
	ServerKey string // the server public key's text (§7)
	TokenKey  string // postern token's output, or ""
	Open      []port.Spec
	Family    string        // "", "ipv4" or "ipv6"
	Duration  time.Duration // 0: the server's default
}

// ProvisionOf is the provisioning of profile p, its server key read from
// the file it names if it is not the key itself.
func ProvisionOf(p *SPAProfile, serverKey string) Provision {
	pv := Provision{Host: p.Host, Port: p.Port, ServerKey: serverKey, TokenKey: p.TokenKey, Open: p.Open, Duration: p.Duration}
	switch p.Network {
	case "udp4":
		pv.Family = "ipv4"
	case "udp6":
		pv.Family = "ipv6"
	}
	return pv
}

// URI returns the provisioning URI, its fields in a fixed order (v first).
func (pv Provision) URI() string {
	var b strings.Builder
	b.WriteString(ProvisionScheme + "://knock?v=" + ProvisionVersion)
	add := func(k, v string) {
		if v == "" {
			return
		}
		// '/' and ',' may stand in a query (RFC 3986): tcp/22,udp/53 stays
		// readable; '+' of base64 must not (it would read as a space).
		v = strings.NewReplacer("%2F", "/", "%2C", ",").Replace(url.QueryEscape(v))
		b.WriteString("&" + k + "=" + v)
	}
	add("host", pv.Host)
	if pv.Port != 0 {
		add("port", strconv.Itoa(int(pv.Port)))
	}
	add("server_key", pv.ServerKey)
	add("open", port.Join(pv.Open))
	add("family", pv.Family)
	if pv.Duration > 0 {
		add("duration", pv.Duration.String())
	}
	add("token_key", pv.TokenKey)
	return b.String()
}

// ParseProvisionURI reads a provisioning URI; a field it does not know is
// an error (a newer version would say v=2), as is anything out of range.
func ParseProvisionURI(s string) (Provision, error) {
	var pv Provision
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return pv, fmt.Errorf("provisioning URI: %w", err)
	}
	if u.Scheme != ProvisionScheme || u.Host != "knock" {
		return pv, errors.New("provisioning URI: want postern://knock?…")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return pv, fmt.Errorf("provisioning URI: %w", err)
	}
	if v := q.Get("v"); v != ProvisionVersion {
		return pv, fmt.Errorf("provisioning URI version %q: this postern reads version %s", v, ProvisionVersion)
	}
	for k, vs := range q {
		switch k {
		case "v", "host", "port", "server_key", "open", "family", "duration", "token_key":
		default:
			return pv, fmt.Errorf("provisioning URI: unknown field %q", k)
		}
		if len(vs) != 1 {
			return pv, fmt.Errorf("provisioning URI: %s given %d times", k, len(vs))
		}
	}
	pv.Host, pv.ServerKey, pv.TokenKey, pv.Family = q.Get("host"), q.Get("server_key"), q.Get("token_key"), q.Get("family")
	if pv.Host == "" || pv.ServerKey == "" {
		return pv, errors.New("provisioning URI: needs host and server_key")
	}
	if p := q.Get("port"); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return pv, fmt.Errorf("provisioning URI: port %q", p)
		}
		pv.Port = uint16(n)
	}
	if o := q.Get("open"); o != "" {
		for _, f := range strings.Split(o, ",") {
			sp, err := port.Parse(f)
			if err != nil {
				return pv, fmt.Errorf("provisioning URI: open: %w", err)
			}
			pv.Open = append(pv.Open, sp)
		}
	}
	switch pv.Family {
	case "", "ipv4", "ipv6":
	default:
		return pv, fmt.Errorf("provisioning URI: family %q: want ipv4 or ipv6", pv.Family)
	}
	if d := q.Get("duration"); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil || v <= 0 {
			return pv, fmt.Errorf("provisioning URI: duration %q", d)
		}
		pv.Duration = v
	}
	return pv, nil
}

// AddSPAProfile appends a [[spa]] profile called name, knocking with the
// key in keyFile, to the client configuration at path (created if
// missing, replaced atomically, mode 0600). A profile of that name
// already there is an error: nothing is overwritten.
func AddSPAProfile(path, name, keyFile string, pv Provision) error {
	if name == "" {
		return errors.New("a profile needs a name")
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if len(old) > 0 {
		raw, err := readProfiles(path)
		if err != nil {
			return err
		}
		for _, p := range raw.SPA {
			if p.Name == name {
				return fmt.Errorf("%s already has a [[spa]] profile %q: not replacing it (choose another --name)", path, name)
			}
		}
	}
	raw := rawSPAProfile{Name: name, Host: pv.Host, KeyFile: keyFile, ServerKey: pv.ServerKey, Port: int(pv.Port),
		Family: pv.Family, TokenKey: pv.TokenKey}
	for _, o := range pv.Open {
		raw.Open = append(raw.Open, o.String())
	}
	if pv.Duration > 0 {
		raw.Duration = pv.Duration.String()
	}
	block, err := toml.Marshal(struct {
		SPA []rawSPAProfile `toml:"spa"`
	}{[]rawSPAProfile{raw}})
	if err != nil {
		return err
	}
	out := append([]byte(nil), old...)
	if len(out) > 0 && !strings.HasSuffix(string(out), "\n") {
		out = append(out, '\n')
	}
	if len(out) > 0 {
		out = append(out, '\n')
	}
	out = append(out, block...)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, out, 0o600)
}
