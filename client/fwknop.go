package client

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/fko"
)

// FwknopSettings are fwknop client settings keyed by the .fwknoprc variable
// names (ACCESS, SPA_SERVER, KEY_BASE64, …), whatever they came from.
type FwknopSettings map[string]fko.RCValue

// FwknopRequest is what the command line asked for beyond the settings.
type FwknopRequest struct {
	Settings  FwknopSettings
	RCFile    string // "" with --no-rc-file
	Stanza    string // -n
	Test      bool   // -T: build and check, send nothing
	Verbose   bool
	KeyGen    bool   // -k
	KeyGenOut string // -K FILE
	SaveFile  string // -B FILE
	Help      bool
	Version   bool // -V
}

// fwknop's options: short and long spellings, whether they take a value,
// and the rc variable they set ("" for the ones handled directly).
var fwknopOpts = []struct {
	short, long string
	arg         bool
	rcVar       string
}{
	{"A", "access", true, "ACCESS"},
	{"a", "allow-ip", true, "ALLOW_IP"},
	{"s", "source-ip", false, "ALLOW_IP=source"},
	{"R", "resolve-ip-https", false, "RESOLVE_IP_HTTPS=Y"},
	{"", "resolve-url", true, "RESOLVE_URL"},
	{"", "resolve-http-only", false, "RESOLVE_HTTP_ONLY=Y"},
	{"D", "destination", true, "SPA_SERVER"},
	{"p", "server-port", true, "SPA_SERVER_PORT"},
	{"P", "server-proto", true, "SPA_SERVER_PROTO"},
	{"f", "fw-timeout", true, "FW_TIMEOUT"},
	{"N", "nat-access", true, "NAT_ACCESS"},
	{"", "nat-local", false, "NAT_LOCAL=Y"},
	{"", "nat-port", true, "NAT_PORT"},
	{"", "nat-rand-port", false, "NAT_RAND_PORT=Y"},
	{"C", "server-cmd", true, "SERVER_CMD"},
	{"U", "spoof-user", true, "SPOOF_USER"},
	{"m", "digest-type", true, "DIGEST_TYPE"},
	{"M", "encryption-mode", true, "ENCRYPTION_MODE"},
	{"", "key-rijndael", true, "KEY"},
	{"", "key-base64-rijndael", true, "KEY_BASE64"},
	{"", "key-hmac", true, "HMAC_KEY"},
	{"", "key-base64-hmac", true, "HMAC_KEY_BASE64"},
	{"", "use-hmac", false, "USE_HMAC=Y"},
	{"", "hmac-digest-type", true, "HMAC_DIGEST_TYPE"},
	{"", "gpg-recipient-key", true, "GPG_RECIPIENT"},
	{"", "gpg-signer-key", true, "GPG_SIGNER"},
	{"", "gpg-home-dir", true, "GPG_HOMEDIR"},
	{"", "gpg-encryption", false, "USE_GPG=Y"},
	{"", "gpg-no-signing-pw", false, ""},
	{"", "gpg-agent", false, ""},
	{"", "time-offset-plus", true, "TIME_OFFSET+"},
	{"", "time-offset-minus", true, "TIME_OFFSET-"},
	{"n", "named-config", true, ""},
	{"", "rc-file", true, ""},
	{"", "no-rc-file", false, ""},
	{"", "no-save-args", false, ""},
	{"T", "test", false, ""},
	{"v", "verbose", false, ""},
	{"k", "key-gen", false, ""},
	{"K", "key-gen-file", true, ""},
	{"B", "save-packet", true, ""},
	{"h", "help", false, ""},
	{"V", "version", false, ""},
}

// ParseFwknopArgs reads fwknop's command line (getopt_long style: "-A x",
// "-Ax", "--access x", "--access=x").
//
// Long on purpose: fwknop's command line, option by option, as fwknop reads it.
func ParseFwknopArgs(args []string) (*FwknopRequest, error) {
	r := &FwknopRequest{Settings: FwknopSettings{}}
	if home, err := os.UserHomeDir(); err == nil {
		r.RCFile = filepath.Join(home, ".fwknoprc")
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		var name, value string
		hasValue := false
		switch {
		case strings.HasPrefix(a, "--"):
			name, value, hasValue = strings.Cut(a[2:], "=")
		case strings.HasPrefix(a, "-") && len(a) >= 2:
			name = a[1:2]
			if len(a) > 2 {
				value, hasValue = a[2:], true
			}
		default:
			return nil, fmt.Errorf("unexpected argument %q", a)
		}
		// getopt_long: a long option may be abbreviated to any unambiguous
		// prefix (--gpg-recip, --gpg-sign).
		if strings.HasPrefix(a, "--") {
			if full, err := longOption(name); err != nil {
				return nil, err
			} else {
				name = full
			}
		}
		found := false
		for _, o := range fwknopOpts {
			if name != o.short && name != o.long {
				continue
			}
			found = true
			if o.arg && !hasValue {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("option %s needs a value", a)
				}
				i++
				value = args[i]
			} else if !o.arg && hasValue {
				if len(name) == 1 {
					return nil, fmt.Errorf("option -%s takes no value (combined short options are not supported)", name)
				}
				return nil, fmt.Errorf("option --%s takes no value", name)
			}
			cli := fko.RCValue{Value: value, File: "command line"}
			switch {
			case o.rcVar == "ALLOW_IP=source":
				cli.Value = "source"
				r.Settings["ALLOW_IP"] = cli
			case strings.HasSuffix(o.rcVar, "=Y"):
				cli.Value = "Y"
				r.Settings[strings.TrimSuffix(o.rcVar, "=Y")] = cli
			case o.rcVar == "TIME_OFFSET+" || o.rcVar == "TIME_OFFSET-":
				if o.rcVar == "TIME_OFFSET-" {
					cli.Value = "-" + value
				}
				r.Settings["TIME_OFFSET"] = cli
			case o.rcVar != "":
				r.Settings[o.rcVar] = cli
			case o.long == "named-config":
				r.Stanza = value
			case o.long == "rc-file":
				r.RCFile = value
			case o.long == "no-rc-file":
				r.RCFile = ""
			case o.long == "test":
				r.Test = true
			case o.long == "verbose":
				r.Verbose = true
			case o.long == "key-gen":
				r.KeyGen = true
			case o.long == "key-gen-file":
				r.KeyGen, r.KeyGenOut = true, value
			case o.long == "save-packet":
				r.SaveFile = value
			case o.long == "help":
				r.Help = true
			case o.long == "version":
				r.Version = true
			}
			break
		}
		if !found {
			return nil, fmt.Errorf("unknown or unsupported fwknop option %q", a)
		}
	}
	return r, nil
}

func longOption(name string) (string, error) {
	var matches []string
	for _, o := range fwknopOpts {
		if o.long == name {
			return name, nil
		}
		if o.long != "" && strings.HasPrefix(o.long, name) {
			matches = append(matches, o.long)
		}
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("unknown or unsupported fwknop option --%s", name)
	case 1:
		return matches[0], nil
	}
	return "", fmt.Errorf("option --%s is ambiguous: %s", name, strings.Join(matches, ", "))
}

// Resolve layers the settings: [default] from the rc file, then the named
// stanza, then the command line. A key given in one form replaces the other
// form from a lower layer.
func (r *FwknopRequest) Resolve() (FwknopSettings, error) {
	return r.ResolveWarn(nil)
}

// ResolveWarn is Resolve, telling warn (if not nil) about an rc file that
// group or others may read, as fwknop does: it holds keys.
func (r *FwknopRequest) ResolveWarn(warn func(string)) (FwknopSettings, error) {
	out := FwknopSettings{}
	if r.RCFile != "" && warn != nil {
		if st, err := os.Stat(r.RCFile); err == nil && st.Mode().Perm()&0o077 != 0 && runtime.GOOS != "windows" {
			warn(fmt.Sprintf("[-] %s permissions should only be user read/write (0600, -rw-------), not %04o",
				r.RCFile, st.Mode().Perm()))
		}
	}
	apply := func(layer map[string]fko.RCValue) {
		for k, v := range layer {
			for _, pair := range [][2]string{{"KEY", "KEY_BASE64"}, {"HMAC_KEY", "HMAC_KEY_BASE64"}} {
				if k == pair[0] {
					delete(out, pair[1])
				} else if k == pair[1] {
					delete(out, pair[0])
				}
			}
			out[k] = v
		}
	}
	if r.RCFile != "" {
		rc, err := fko.ReadRC(r.RCFile)
		switch {
		case err == nil:
			apply(rc["default"])
			if r.Stanza != "" {
				st, ok := rc[r.Stanza]
				if !ok {
					return nil, fmt.Errorf("%s: no stanza [%s]", r.RCFile, r.Stanza)
				}
				apply(st)
			}
		case errors.Is(err, os.ErrNotExist) && r.Stanza == "":
		default:
			return nil, err
		}
	} else if r.Stanza != "" {
		return nil, errors.New("-n needs an rc file")
	}
	apply(r.Settings)
	return out, nil
}

// rc variables that only matter for features postern's client leaves out;
// setting them to anything but their harmless value is an error, so that a
// stanza never silently does something else than it says.
var fwknopUnsupported = map[string]string{
	"RAND_PORT":       "N",
	"SPOOF_SOURCE_IP": "", "SPA_SOURCE_PORT": "", "KEY_FILE": "", "HMAC_KEY_FILE": "",
	"USE_GPG_AGENT": "N",
}

// cosmetic or irrelevant variables, accepted and ignored.
var fwknopIgnored = map[string]bool{"VERBOSE": true, "NO_SAVE_ARGS": true, "WGET_CMD": true,
	"HTTP_USER_AGENT": true, "SERVER_RESOLVE_IPV4": true, "USE_GPG": true}

// FwknopPacket is a built fwknop SPA packet.
type FwknopPacket struct {
	Wire    string
	Message *fko.Message
	To      string // host:port
}

// BuildFwknop builds the packet the settings describe.
func BuildFwknop(s FwknopSettings, now time.Time) (*FwknopPacket, *fko.Keys, error) {
	if err := s.check(); err != nil {
		return nil, nil, err
	}
	to, err := s.destination()
	if err != nil {
		return nil, nil, err
	}
	keys, err := s.keys()
	if err != nil {
		return nil, nil, err
	}
	m, err := s.message(now)
	if err != nil {
		return nil, nil, err
	}
	pt, err := m.Encode()
	if err != nil {
		return nil, nil, err
	}
	wire, err := keys.Seal(pt)
	if err != nil {
		return nil, nil, err
	}
	m.Version = fko.Version
	return &FwknopPacket{Wire: wire, Message: m, To: to}, keys, nil
}

// bad names where a setting came from (the command line, or an rc file
// and line) in an error.
func (s FwknopSettings) bad(name, format string, args ...any) error {
	v := s[name]
	where := v.File
	if v.Line > 0 {
		where = fmt.Sprintf("%s:%d", v.File, v.Line)
	}
	return fmt.Errorf("%s: %s: %s", where, name, fmt.Sprintf(format, args...))
}

func (s FwknopSettings) get(name string) string { return s[name].Value }

func (s FwknopSettings) yes(name string) bool {
	return strings.EqualFold(s.get(name), "Y") || strings.EqualFold(s.get(name), "YES")
}

// check refuses unknown variables and those postern does not support.
func (s FwknopSettings) check() error {
	for name, v := range s {
		if harmless, ok := fwknopUnsupported[name]; ok && !strings.EqualFold(v.Value, harmless) {
			return s.bad(name, "not supported by postern fwknop")
		}
		if _, ok := fwknopUnsupported[name]; !ok && !fwknopIgnored[name] && !knownFwknopVar[name] {
			return s.bad(name, "unknown variable")
		}
	}
	return nil
}

// destination is the server's host:port.
func (s FwknopSettings) destination() (string, error) {
	if p := s.get("SPA_SERVER_PROTO"); p != "" && !strings.EqualFold(p, "udp") {
		return "", s.bad("SPA_SERVER_PROTO", "%q: postern fwknop sends over udp only", p)
	}
	server := s.get("SPA_SERVER")
	if server == "" {
		return "", errors.New("no SPA server: use -D HOST (or SPA_SERVER in the rc stanza)")
	}
	portNum := 62201
	if p := s.get("SPA_SERVER_PORT"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", s.bad("SPA_SERVER_PORT", "%q is not a port", p)
		}
		portNum = n
	}
	return net.JoinHostPort(server, strconv.Itoa(portNum)), nil
}

// maxFwknopKey is fwknop's MAX_KEY_LEN.
const maxFwknopKey = 128

// keys are the Rijndael and HMAC keys, or GnuPG's recipient and signer.
func (s FwknopSettings) keys() (*fko.Keys, error) {
	keys := &fko.Keys{}
	var err error
	if k := s.get("KEY"); k != "" {
		keys.Key = []byte(k)
	} else if k := s.get("KEY_BASE64"); k != "" {
		if keys.Key, err = base64.StdEncoding.DecodeString(k); err != nil {
			return nil, s.bad("KEY_BASE64", "not valid base64")
		}
	} else if s.get("GPG_RECIPIENT") == "" && (s.get("GPG_SIGNING_PW") != "" || s.get("GPG_SIGNING_PW_BASE64") != "") {
		// fwknop's client stores GPG_SIGNING_PW(_BASE64) where KEY(_BASE64)
		// goes (config_init.c), so without GnuPG it is the Rijndael key.
		if k := s.get("GPG_SIGNING_PW"); k != "" {
			keys.Key = []byte(k)
		} else if keys.Key, err = base64.StdEncoding.DecodeString(s.get("GPG_SIGNING_PW_BASE64")); err != nil {
			return nil, s.bad("GPG_SIGNING_PW_BASE64", "not valid base64")
		}
		fmt.Fprintln(os.Stderr, "[-] GPG_SIGNING_PW without GnuPG is used as the Rijndael key, as fwknop does; name it KEY instead")
	}
	if k := s.get("HMAC_KEY"); k != "" {
		keys.HMACKey = []byte(k)
	} else if k := s.get("HMAC_KEY_BASE64"); k != "" {
		if keys.HMACKey, err = base64.StdEncoding.DecodeString(k); err != nil {
			return nil, s.bad("HMAC_KEY_BASE64", "not valid base64")
		}
	}
	// fwknop's keys are at most 128 bytes (MAX_KEY_LEN): a longer base64
	// key is refused, a longer plain one cut to 128 (strlcpy), as there.
	for _, k := range []struct {
		name, b64 string
		key       *[]byte
	}{{"KEY", "KEY_BASE64", &keys.Key}, {"HMAC_KEY", "HMAC_KEY_BASE64", &keys.HMACKey}} {
		if len(*k.key) <= maxFwknopKey {
			continue
		}
		if s.get(k.name) == "" {
			return nil, s.bad(k.b64, "Invalid decoded key length: '%d', must be in [0,%d] (as fwknop)", len(*k.key), maxFwknopKey)
		}
		*k.key = (*k.key)[:maxFwknopKey]
		fmt.Fprintf(os.Stderr, "[-] %s is longer than %d characters: cut to %d, as fwknop does\n", k.name, maxFwknopKey, maxFwknopKey)
	}
	// As the fwknop client: an HMAC key (or --hmac-digest-type) turns the
	// HMAC on by itself; USE_HMAC N in an rc file turns it off.
	useHMAC := s.yes("USE_HMAC") || (s.get("USE_HMAC") == "" && (len(keys.HMACKey) > 0 || s.get("HMAC_DIGEST_TYPE") != ""))
	switch {
	case !useHMAC:
		keys.HMACKey = nil
	case len(keys.HMACKey) == 0:
		return nil, errors.New("the HMAC needs a key (--key-hmac or --key-base64-hmac)")
	case len(keys.Key) > 0 && string(keys.Key) == string(keys.HMACKey):
		return nil, errors.New("the encryption and HMAC keys must differ (fwknop refuses equal keys)")
	}
	if t := s.get("HMAC_DIGEST_TYPE"); t != "" {
		if keys.HMACType, err = fko.ParseDigestType(t); err != nil {
			return nil, s.bad("HMAC_DIGEST_TYPE", "%v", err)
		}
	}
	if m := s.get("ENCRYPTION_MODE"); m != "" {
		if keys.Mode, err = fko.ParseMode(m); err != nil {
			return nil, s.bad("ENCRYPTION_MODE", "%v", err)
		}
	}
	if r := s.get("GPG_RECIPIENT"); r != "" {
		keys.GPG = &fko.GPG{Recipient: r, Signer: s.get("GPG_SIGNER"), HomeDir: expandHome(s.get("GPG_HOMEDIR")),
			Exe: s.get("GPG_EXE"), SignerPW: s.get("GPG_SIGNING_PW")}
		if b := s.get("GPG_SIGNING_PW_BASE64"); b != "" {
			pw, err := base64.StdEncoding.DecodeString(b)
			if err != nil {
				return nil, s.bad("GPG_SIGNING_PW_BASE64", "not valid base64")
			}
			keys.GPG.SignerPW = string(pw)
		}
		keys.Key = nil
	} else if len(keys.Key) == 0 {
		return nil, errors.New("no encryption key: use --key-rijndael, --key-base64-rijndael or --gpg-recipient (postern fwknop does not prompt)")
	}
	return keys, nil
}

// message is the SPA message: what to open (or the command), for whom, for
// how long, NAT, user and timestamp.
func (s FwknopSettings) message(now time.Time) (*fko.Message, error) {
	m := &fko.Message{Timestamp: now.Unix(), Type: fko.AccessMsg, Digest: fko.SHA256}
	var err error
	if m.Rand, err = fko.NewRand(); err != nil {
		return nil, err
	}
	if d := s.get("DIGEST_TYPE"); d != "" {
		if m.Digest, err = fko.ParseDigestType(d); err != nil {
			return nil, s.bad("DIGEST_TYPE", "%v", err)
		}
	}
	if off := s.get("TIME_OFFSET"); off != "" {
		d, err := parseOffset(off)
		if err != nil {
			return nil, s.bad("TIME_OFFSET", "%v", err)
		}
		m.Timestamp += int64(d / time.Second)
	}
	m.User = cmp.Or(s.get("SPOOF_USER"), localUser())
	allow := s.get("ALLOW_IP")
	switch strings.ToLower(allow) {
	case "":
		return nil, errors.New("must use one of -s (source) or -a ADDRESS (-R is not supported)")
	case "source":
		allow = "0.0.0.0"
	case "resolve":
		return nil, s.bad("ALLOW_IP", "\"resolve\" (-R): the address was not resolved")
	}
	if cmd := s.get("SERVER_CMD"); cmd != "" {
		m.Type, m.Message = fko.CommandMsg, allow+","+cmd
		return m, nil
	}
	access := strings.ReplaceAll(s.get("ACCESS"), " ", "")
	if access == "" {
		return nil, errors.New("nothing to ask for: use -A proto/port[,…] (or -C CMD)")
	}
	m.Message = allow + "," + access
	acc, err := fko.ParseAccessMessage(m.Message)
	if err != nil {
		return nil, err
	}
	if err := s.nat(m, acc); err != nil {
		return nil, err
	}
	if t := s.get("FW_TIMEOUT"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 || n > 65535 {
			return nil, s.bad("FW_TIMEOUT", "%q: want seconds", t)
		}
		if n > 0 {
			m.ClientTimeout = n
			m.Type = map[fko.MessageType]fko.MessageType{fko.AccessMsg: fko.ClientTimeoutAccessMsg,
				fko.NATAccessMsg: fko.ClientTimeoutNATAccessMsg, fko.LocalNATAccessMsg: fko.ClientTimeoutLocalNATAccessMsg}[m.Type]
		}
	}
	return m, nil
}

// nat sets the NAT part of an access message as fwknop's client does
// (set_access_buf, set_nat_access): -N HOST:PORT asks the server to forward
// the requested port to HOST:PORT; --nat-local to its own PORT (the -A
// port); --nat-port or --nat-rand-port replace the requested port, which
// is then the one the client connects to.
func (s FwknopSettings) nat(m *fko.Message, acc fko.Access) error {
	local, natAccess := s.yes("NAT_LOCAL"), s.get("NAT_ACCESS")
	if !local && natAccess == "" {
		if s.get("NAT_PORT") != "" || s.yes("NAT_RAND_PORT") {
			return s.bad("NAT_PORT", "needs -N HOST:PORT or --nat-local")
		}
		return nil
	}
	if len(acc.Ports) != 1 {
		return s.bad("ACCESS", "NAT takes one proto/port with -A")
	}
	first := acc.Ports[0]
	var external uint16
	switch {
	case s.yes("NAT_RAND_PORT"):
		external = uint16(10000 + mathrand.IntN(55535))
		fmt.Fprintf(os.Stderr, "[+] Randomly assigned port '%d' will grant access\n", external)
	case s.get("NAT_PORT") != "":
		n, err := strconv.ParseUint(s.get("NAT_PORT"), 10, 16)
		if err != nil || n == 0 {
			return s.bad("NAT_PORT", "%q: want a port", s.get("NAT_PORT"))
		}
		external = uint16(n)
	}
	if external != 0 {
		allow, _, _ := strings.Cut(m.Message, ",")
		m.Message = fmt.Sprintf("%s,%s/%d", allow, first.Proto, external)
	}
	if natAccess != "" {
		// HOST:PORT (-N) or HOST,PORT (the rc file's form): fwknop turns the
		// ':' into a ','; HOST alone keeps the -A port.
		h, p, ok := strings.Cut(strings.Replace(natAccess, ":", ",", 1), ",")
		if !ok {
			p = strconv.Itoa(int(first.Num))
		}
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 || h == "" {
			return s.bad("NAT_ACCESS", "%q: want host:port or host,port", natAccess)
		}
		m.Type, m.NAT = fko.NATAccessMsg, h+","+p
	} else {
		m.Type, m.NAT = fko.NATAccessMsg, fmt.Sprintf("%s,%d", s.get("SPA_SERVER"), first.Num)
	}
	if local {
		m.Type = fko.LocalNATAccessMsg
	}
	return nil
}

var knownFwknopVar = map[string]bool{
	"ACCESS": true, "ALLOW_IP": true, "SPA_SERVER": true, "SPA_SERVER_PORT": true, "SPA_SERVER_PROTO": true,
	"FW_TIMEOUT": true, "NAT_ACCESS": true, "SERVER_CMD": true, "SPOOF_USER": true, "DIGEST_TYPE": true,
	"ENCRYPTION_MODE": true, "KEY": true, "KEY_BASE64": true, "HMAC_KEY": true, "HMAC_KEY_BASE64": true,
	"USE_HMAC": true, "HMAC_DIGEST_TYPE": true, "GPG_RECIPIENT": true, "GPG_SIGNER": true, "GPG_HOMEDIR": true,
	"TIME_OFFSET": true, "RESOLVE_IP_HTTPS": true, "RESOLVE_IP_HTTP": true, "RESOLVE_HTTP_ONLY": true, "RESOLVE_URL": true,
	"NAT_LOCAL": true, "NAT_PORT": true, "NAT_RAND_PORT": true, "GPG_EXE": true, "GPG_NO_SIGNING_PW": true, "GPG_SIGNING_PW": true, "GPG_SIGNING_PW_BASE64": true,
}

// parseOffset reads a time offset as fwknop's parse_time_offset does:
// the digits, then an optional unit letter m/M, h/H or d/D (seconds
// without one; anything else is skipped), at most 65 536 units; a leading
// '-' (TIME_OFFSET in the rc file, --time-offset-minus) makes it negative.
// As in fwknop, "1h30m" is one hour: the first unit ends the number.
func parseOffset(s string) (time.Duration, error) {
	neg := strings.HasPrefix(s, "-")
	body := strings.TrimPrefix(strings.TrimPrefix(s, "-"), "+")
	digits, unit := "", time.Second
scan:
	for _, c := range body {
		switch {
		case c >= '0' && c <= '9':
			digits += string(c)
		case c == 'm' || c == 'M':
			unit = time.Minute
			break scan
		case c == 'h' || c == 'H':
			unit = time.Hour
			break scan
		case c == 'd' || c == 'D':
			unit = 24 * time.Hour
			break scan
		}
	}
	n, err := strconv.Atoi(digits)
	if digits == "" || err != nil || n > 2<<15 {
		return 0, fmt.Errorf("%q: want NUMBER with an optional unit m, h or d (fwknop's form)", s)
	}
	d := time.Duration(n) * unit
	if neg {
		d = -d
	}
	return d, nil
}

func expandHome(p string) string {
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	return p
}

// localUser is fwknop's username rule: LOGNAME, then the login user, then
// USER, else NO_USER.
func localUser() string {
	if v := os.Getenv("LOGNAME"); v != "" {
		return v
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if v := os.Getenv("USER"); v != "" {
		return v
	}
	return "NO_USER"
}

// SendFwknop sends one packet over UDP.
func SendFwknop(ctx context.Context, p *FwknopPacket) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", p.To)
	if err != nil {
		return fmt.Errorf("fwknop: %w", err)
	}
	defer c.Close()
	_, err = c.Write([]byte(p.Wire))
	return err
}

// PrintFwknop prints the field values as fwknop -v does.
func PrintFwknop(w io.Writer, p *FwknopPacket, k *fko.Keys) {
	m := p.Message
	nat := m.NAT
	if nat == "" {
		nat = "<NULL>"
	}
	enc, mode := "1 (Rijndael)", "2 (CBC)"
	if k.GPG != nil {
		enc, mode = "2 (GnuPG)", "<n/a>"
	} else if k.Mode == fko.LegacyCBC {
		mode = "8 (legacy)"
	}
	fmt.Fprintf(w, "SPA Field Values:\n=================\n")
	fmt.Fprintf(w, "   Random Value: %s\n       Username: %s\n      Timestamp: %d\n    FKO Version: %s\n",
		m.Rand, m.User, m.Timestamp, fko.Version)
	fmt.Fprintf(w, "   Message Type: %d\n Message String: %s\n     Nat Access: %s\n Client Timeout: %d\n",
		m.Type, m.Message, nat, m.ClientTimeout)
	fmt.Fprintf(w, "    Digest Type: %v\nEncryption Type: %s\nEncryption Mode: %s\n Final SPA Data: %s\n\n",
		m.Digest, enc, mode, p.Wire)
	fmt.Fprintf(w, "Destination: %s (udp), %d characters\n", p.To, len(p.Wire))
}

// FwknopKeyGen returns new keys as fwknop --key-gen prints them.
func FwknopKeyGen() (string, error) {
	key, hkey := make([]byte, 32), make([]byte, 64)
	if _, err := randRead(key); err != nil {
		return "", err
	}
	if _, err := randRead(hkey); err != nil {
		return "", err
	}
	return fmt.Sprintf("KEY_BASE64: %s\nHMAC_KEY_BASE64: %s\n",
		base64.StdEncoding.EncodeToString(key), base64.StdEncoding.EncodeToString(hkey)), nil
}

var randRead = rand.Read
