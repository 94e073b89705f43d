package fko

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/internal/conferr"
	"github.com/postern/postern/port"
)

// Stanza is one access.conf stanza: who may knock with which keys, and what
// they may open.
type Stanza struct {
	File string
	Line int // the SOURCE line that starts it

	Source      []netip.Prefix
	Destination []netip.Prefix // nil: any
	OpenPorts   []port.Spec    // nil: any port not restricted
	Restrict    []port.Spec

	Rijndael *Keys // nil: no KEY in the stanza
	GPG      *Keys // nil: no GnuPG in the stanza

	FWAccessTimeout int // seconds, when the client asks for none
	MaxFWTimeout    int // cap on the client's timeout
	RequireSource   bool
	RequireUsername string
	AccessExpire    time.Time // zero: never

	CmdCycleOpen, CmdCycleClose string // "" and "NONE": no close command
	CmdCycleTimer               int

	EnableCmdExec bool
	CmdExecUser   string
	CmdExecGroup  string

	GPGRequireSig     bool
	GPGIgnoreSigError bool
	GPGRemoteIDs      []string
	GPGFingerprints   []string

	// Gateway keywords: FORCE_NAT sends every request of the stanza to
	// one internal host and port; FORCE_SNAT / FORCE_MASQUERADE rewrite
	// the source of forwarded traffic; DISABLE_DNAT forwards without
	// translating the destination. NATLine is where the first of them is,
	// for the error when fwknopd.conf's switches are off.
	ForceNAT        netip.AddrPort
	ForceSNAT       netip.Addr
	ForceMasquerade bool
	DisableDNAT     bool
	// ForwardAll (FORWARD_ALL) forwards everything the client sends
	// through this host, DNATed to FORCE_NAT's host unless DISABLE_DNAT.
	ForwardAll bool
	NATFile    string
	NATLine    int
}

// fwknopd's defaults.
const (
	DefaultFWAccessTimeout = 30
	DefaultMaxFWTimeout    = 300
)

// Matches reports whether a packet from src to dst may use this stanza now.
func (s *Stanza) Matches(src, dst netip.Addr, now time.Time) bool {
	if !s.AccessExpire.IsZero() && now.After(s.AccessExpire) {
		return false
	}
	in := func(ps []netip.Prefix, a netip.Addr) bool {
		for _, p := range ps {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	return in(s.Source, src) && (s.Destination == nil || in(s.Destination, dst))
}

// PortAllowed applies OPEN_PORTS and RESTRICT_PORTS.
func (s *Stanza) PortAllowed(p port.Spec) bool {
	for _, r := range s.Restrict {
		if r == p {
			return false
		}
	}
	if s.OpenPorts == nil {
		return true
	}
	for _, o := range s.OpenPorts {
		if o == p {
			return true
		}
	}
	return false
}

// ReadAccess reads an access.conf, following %include and %include_folder.
// Every keyword postern does not support is an error naming it: silently
// ignoring, say, FORCE_NAT would open something other than what the
// administrator asked for.
func ReadAccess(path string) ([]*Stanza, error) { return ReadAccessWarn(path, nil) }

// ReadAccessWarn is ReadAccess, telling warn (file:line: text) about what
// fwknopd only warns about and skips: unknown keywords.
func ReadAccessWarn(path string, warn func(string)) ([]*Stanza, error) {
	r := &accessReader{seen: map[string]bool{}, warn: warn}
	if err := r.file(path, 0); err != nil {
		return nil, err
	}
	if err := r.finish(); err != nil {
		return nil, err
	}
	if len(r.stanzas) == 0 {
		return nil, &conferr.Error{File: path, Line: 1, Msg: "no SOURCE stanza"}
	}
	return r.stanzas, nil
}

// ParseAccessConf reads access.conf text (includes are relative to the
// directory of path).
func ParseAccessConf(path string, data []byte) ([]*Stanza, error) {
	r := &accessReader{seen: map[string]bool{path: true}}
	if err := r.text(path, data, 0); err != nil {
		return nil, err
	}
	if err := r.finish(); err != nil {
		return nil, err
	}
	if len(r.stanzas) == 0 {
		return nil, &conferr.Error{File: path, Line: 1, Msg: "no SOURCE stanza"}
	}
	return r.stanzas, nil
}

type accessReader struct {
	warn    func(string) // nil: warnings dropped
	seen    map[string]bool
	stanzas []*Stanza
	cur     *Stanza
	raw     map[string]rawValue // the current stanza's keywords
}

type rawValue struct {
	value string
	line  int
	file  string
}

func (r *accessReader) file(path string, depth int) error {
	if depth > 8 {
		return fmt.Errorf("%s: %%include nested too deep", path)
	}
	abs, _ := filepath.Abs(path)
	if r.seen[abs] {
		return fmt.Errorf("%s: included twice", path)
	}
	r.seen[abs] = true
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return r.text(path, data, depth)
}

// supported keywords of a stanza; every other keyword is refused by name.
var stanzaKeywords = map[string]bool{
	"DESTINATION": true, "OPEN_PORTS": true, "RESTRICT_PORTS": true, "KEY": true, "KEY_BASE64": true,
	"HMAC_KEY": true, "HMAC_KEY_BASE64": true, "HMAC_DIGEST_TYPE": true, "ENCRYPTION_MODE": true,
	"FW_ACCESS_TIMEOUT": true, "MAX_FW_TIMEOUT": true, "REQUIRE_SOURCE_ADDRESS": true, "REQUIRE_SOURCE": true,
	"REQUIRE_USERNAME": true, "ACCESS_EXPIRE": true, "ACCESS_EXPIRE_EPOCH": true,
	"CMD_CYCLE_OPEN": true, "CMD_CYCLE_CLOSE": true, "CMD_CYCLE_TIMER": true,
	"ENABLE_CMD_EXEC": true, "CMD_EXEC_USER": true, "CMD_EXEC_GROUP": true,
	"GPG_HOME_DIR": true, "GPG_EXE": true, "GPG_DECRYPT_ID": true, "GPG_DECRYPT_PW": true, "GPG_ALLOW_NO_PW": true,
	"GPG_REQUIRE_SIG": true, "GPG_DISABLE_SIG": true, "GPG_IGNORE_SIG_VERIFY_ERROR": true,
	"GPG_REMOTE_ID": true, "GPG_FINGERPRINT_ID": true,
	"FORCE_NAT": true, "FORCE_SNAT": true, "FORCE_MASQUERADE": true, "DISABLE_DNAT": true, "FORWARD_ALL": true,
}

// known but not supported, with the reason given to the administrator.
var unsupportedKeywords = map[string]string{
	"ENABLE_CMD_SUDO_EXEC": "use CMD_EXEC_USER / CMD_EXEC_GROUP instead of sudo",
	"CMD_SUDO_EXEC_USER":   "use CMD_EXEC_USER instead of sudo",
	"CMD_SUDO_EXEC_GROUP":  "use CMD_EXEC_GROUP instead of sudo",
	"GPG_ALLOW_NO_SIG":     "not a fwknop 2.6 keyword",
}

// Long on purpose: access.conf's line grammar in one loop.
func (r *accessReader) text(path string, data []byte, depth int) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		kw, value, _ := strings.Cut(line, " ")
		if i := strings.IndexAny(kw, "\t"); i >= 0 {
			kw, value = line[:i], line[i+1:]
		}
		// fwknopd reads "KEYWORD value" with sscanf("%s %[^;\n\r]"): a
		// value ends at ';' (what follows is a comment), and a keyword may
		// end in ':'.
		if i := strings.IndexByte(value, ';'); i >= 0 {
			value = value[:i]
		}
		value = strings.TrimSpace(value)
		kw = strings.TrimSuffix(kw, ":")
		kwU := strings.ToUpper(kw)
		fail := func(format string, args ...any) error {
			return &conferr.Error{File: path, Line: n, Key: kw, Msg: fmt.Sprintf(format, args...)}
		}
		switch {
		case kwU == "%INCLUDE":
			if err := r.file(r.include(path, value), depth+1); err != nil {
				return fail("%v", err)
			}
			continue
		case kwU == "%INCLUDE_FOLDER":
			dir := r.include(path, value)
			entries, err := os.ReadDir(dir)
			if err != nil {
				return fail("%v", err)
			}
			var names []string
			for _, e := range entries {
				// fwknopd reads only *.conf from a folder.
				if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") && strings.HasSuffix(e.Name(), ".conf") {
					names = append(names, e.Name())
				}
			}
			sort.Strings(names)
			for _, name := range names {
				if err := r.file(filepath.Join(dir, name), depth+1); err != nil {
					return fail("%v", err)
				}
			}
			continue
		case kwU == "%INCLUDE_KEYS":
			if r.cur == nil {
				return fail("outside a SOURCE stanza")
			}
			if err := r.keysFile(r.include(path, value)); err != nil {
				return fail("%v", err)
			}
			continue
		case kwU == "SOURCE":
			if err := r.finish(); err != nil {
				return err
			}
			r.cur = &Stanza{File: path, Line: n}
			r.raw = map[string]rawValue{"SOURCE": {value, n, path}}
			continue
		case strings.HasPrefix(kwU, "%"):
			return fail("unsupported directive")
		}
		if why, known := unsupportedKeywords[kwU]; known {
			return fail("not supported: %s", why)
		}
		if !stanzaKeywords[kwU] {
			// fwknopd warns and goes on; so does postern, with the place.
			if r.warn != nil {
				r.warn(fmt.Sprintf("%s:%d: %s: unknown access.conf keyword, ignored (as fwknopd does)", path, n, kw))
			}
			continue
		}
		if r.cur == nil {
			// fwknopd skips it (a stanza starts with SOURCE): it belongs to
			// no stanza, so skipping it changes none. Said with its place.
			if r.warn != nil {
				r.warn(fmt.Sprintf("%s:%d: %s: before the first SOURCE, so in no stanza: ignored (as fwknopd does)", path, n, kw))
			}
			continue
		}
		if value == "" {
			return fail("needs a value")
		}
		r.raw[kwU] = rawValue{value, n, path}
	}
	return sc.Err()
}

// includeKeysKeywords are what fwknopd takes from an %include_keys file;
// it ignores anything else there with a message.
var includeKeysKeywords = map[string]bool{
	"KEY": true, "KEY_BASE64": true, "HMAC_KEY": true, "HMAC_KEY_BASE64": true,
	"GPG_DECRYPT_ID": true, "GPG_DECRYPT_PW": true, "GPG_ALLOW_NO_PW": true, "GPG_REQUIRE_SIG": true,
	"GPG_DISABLE_SIG": true, "GPG_IGNORE_SIG_VERIFY_ERROR": true, "GPG_REMOTE_ID": true, "GPG_FINGERPRINT_ID": true,
}

// keysFile reads an %include_keys file into the current stanza: the keys
// of one user kept apart from the policy, as fwknopd does. Errors name the
// keys file and its line; a file anyone may read is warned about.
func (r *accessReader) keysFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o007 != 0 && r.warn != nil {
		r.warn(fmt.Sprintf("%s: keys file has mode %04o: anyone on this host can read its keys (chmod 600 %s)", path, perm, path))
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return err
	}
	defer clear(data)
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		kw, value, ok := strings.Cut(strings.ReplaceAll(line, "\t", " "), " ")
		if i := strings.IndexByte(value, ';'); i >= 0 {
			value = value[:i]
		}
		value = strings.TrimSpace(value)
		kw = strings.ToUpper(strings.TrimSuffix(kw, ":"))
		if !ok || value == "" {
			return &conferr.Error{File: path, Line: n + 1, Key: kw, Msg: "needs a value"}
		}
		if !includeKeysKeywords[kw] {
			if r.warn != nil {
				r.warn(fmt.Sprintf("%s:%d: %s: not a key keyword, ignored in an %%include_keys file (as fwknopd does)", path, n+1, kw))
			}
			continue
		}
		r.raw[kw] = rawValue{value, n + 1, path}
	}
	return nil
}

// include resolves an %include path: absolute as it is; relative from the
// including file's folder, or else, as fwknopd has it, from the working
// directory.
func (r *accessReader) include(from, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	if near := filepath.Join(filepath.Dir(from), p); fileExists(near) {
		return near
	}
	if fileExists(p) {
		return p
	}
	return filepath.Join(filepath.Dir(from), p)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// finish validates the current stanza.
func (r *accessReader) finish() error {
	s, raw := r.cur, r.raw
	if s == nil {
		return nil
	}
	r.cur = nil
	f := fields(raw)
	for _, step := range []func(*Stanza, fields) error{readAddresses, readKeys, readGPG, readLimits, readCommands, readNAT} {
		if err := step(s, f); err != nil {
			return err
		}
	}
	r.stanzas = append(r.stanzas, s)
	return nil
}

// fields are one stanza's keywords with helpers that read them, each error
// naming the file, line and keyword.
type fields map[string]rawValue

func (f fields) has(kw string) bool { _, ok := f[kw]; return ok }

func (f fields) fail(kw, format string, args ...any) error {
	v := f[kw]
	if v.line == 0 {
		v = f["SOURCE"]
		kw = "SOURCE"
	}
	return &conferr.Error{File: v.file, Line: v.line, Key: kw, Msg: fmt.Sprintf(format, args...)}
}

func (f fields) yes(kw string, def bool) (bool, error) {
	v, ok := f[kw]
	if !ok {
		return def, nil
	}
	switch strings.ToUpper(v.value) {
	case "Y", "YES":
		return true, nil
	case "N", "NO":
		return false, nil
	}
	return false, f.fail(kw, "%q: want Y or N", v.value)
}

func (f fields) prefixes(kw string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, e := range strings.Split(f[kw].value, ",") {
		e = strings.TrimSpace(e)
		if strings.EqualFold(e, "ANY") {
			out = append(out, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if addr, mask, ok := strings.Cut(e, "/"); ok {
			// A dotted netmask, as fwknopd takes: 10.0.0.0/255.0.0.0.
			a, err1 := netip.ParseAddr(addr)
			m, err2 := netip.ParseAddr(mask)
			if bits, okMask := maskBits(m); err1 == nil && err2 == nil && a.Is4() && okMask {
				out = append(out, netip.PrefixFrom(a, bits).Masked())
				continue
			}
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return nil, f.fail(kw, "%q is not an address, CIDR block or ANY", e)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func (f fields) ports(kw string) ([]port.Spec, error) {
	var out []port.Spec
	for _, e := range strings.Split(f[kw].value, ",") {
		p, err := port.Parse(e)
		if err != nil || (p.Proto != port.TCP && p.Proto != port.UDP) {
			return nil, f.fail(kw, "%q: want tcp/PORT or udp/PORT", strings.TrimSpace(e))
		}
		out = append(out, p)
	}
	return out, nil
}

func (f fields) seconds(kw string, def int) (int, error) {
	v, ok := f[kw]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v.value)
	if err != nil || n < 0 || n > 1<<24 {
		return 0, f.fail(kw, "%q: want a number of seconds", v.value)
	}
	if n == 0 {
		return def, nil // fwknopd: 0 means the default
	}
	return n, nil
}

// maskBits turns a dotted IPv4 netmask into a prefix length.
func maskBits(m netip.Addr) (int, bool) {
	if !m.Is4() {
		return 0, false
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for v&0x80000000 != 0 {
		ones++
		v <<= 1
	}
	return ones, v == 0
}

// readAddresses reads SOURCE, DESTINATION, OPEN_PORTS and RESTRICT_PORTS.
func readAddresses(s *Stanza, f fields) error {
	var err error
	if s.Source, err = f.prefixes("SOURCE"); err != nil {
		return err
	}
	if f.has("DESTINATION") {
		if s.Destination, err = f.prefixes("DESTINATION"); err != nil {
			return err
		}
	}
	if f.has("OPEN_PORTS") {
		if s.OpenPorts, err = f.ports("OPEN_PORTS"); err != nil {
			return err
		}
	}
	if f.has("RESTRICT_PORTS") {
		if s.Restrict, err = f.ports("RESTRICT_PORTS"); err != nil {
			return err
		}
	}
	return nil
}

// readKeys reads the Rijndael and HMAC keys, digest and mode.
func readKeys(s *Stanza, f fields) error {
	key, keyKW, err := keyValue(f, "KEY", "KEY_BASE64", f.fail)
	if err != nil {
		return err
	}
	hkey, hkeyKW, err := keyValue(f, "HMAC_KEY", "HMAC_KEY_BASE64", f.fail)
	if err != nil {
		return err
	}
	if len(key) > maxRijndaelKey {
		return f.fail(keyKW, "a Rijndael key is at most %d bytes", maxRijndaelKey)
	}
	if len(hkey) > 136 {
		return f.fail(hkeyKW, "an HMAC key is at most 136 bytes")
	}
	if key != nil && hkey != nil && bytes.Equal(key, hkey) {
		return f.fail(hkeyKW, "the HMAC key must differ from the encryption key")
	}
	htype := SHA256
	if v, ok := f["HMAC_DIGEST_TYPE"]; ok {
		if htype, err = ParseDigestType(v.value); err != nil {
			return f.fail("HMAC_DIGEST_TYPE", "%v", err)
		}
	}
	mode := CBC
	if v, ok := f["ENCRYPTION_MODE"]; ok {
		if mode, err = ParseMode(v.value); err != nil {
			return f.fail("ENCRYPTION_MODE", "%v", err)
		}
	}
	if key != nil {
		s.Rijndael = &Keys{Key: key, Mode: mode, HMACKey: hkey, HMACType: htype}
	}
	// GnuPG stanzas share the HMAC settings.
	s.GPG = &Keys{HMACKey: hkey, HMACType: htype}
	return nil
}

// readGPG reads the GPG_* keywords; a stanza needs a Rijndael key or
// GPG_DECRYPT_ID.
func readGPG(s *Stanza, f fields) error {
	v, ok := f["GPG_DECRYPT_ID"]
	if !ok {
		s.GPG = nil
		for _, kw := range []string{"GPG_HOME_DIR", "GPG_DECRYPT_PW", "GPG_REMOTE_ID", "GPG_FINGERPRINT_ID", "GPG_REQUIRE_SIG"} {
			if f.has(kw) {
				return f.fail(kw, "needs GPG_DECRYPT_ID in the same stanza")
			}
		}
		if s.Rijndael == nil {
			return f.fail("SOURCE", "stanza has no KEY, KEY_BASE64 or GPG_DECRYPT_ID")
		}
		return nil
	}
	g := &GPG{DecryptID: v.value, HomeDir: f["GPG_HOME_DIR"].value, Exe: f["GPG_EXE"].value,
		DecryptPW: f["GPG_DECRYPT_PW"].value}
	noPW, err := f.yes("GPG_ALLOW_NO_PW", false)
	if err != nil {
		return err
	}
	if g.DecryptPW == "" && !noPW {
		return f.fail("GPG_DECRYPT_ID", "needs GPG_DECRYPT_PW or GPG_ALLOW_NO_PW Y")
	}
	s.GPG.GPG = g
	disable, err := f.yes("GPG_DISABLE_SIG", false)
	if err != nil {
		return err
	}
	// fwknopd 2.6.10 (set_acc_defaults): signatures stay required unless
	// GPG_DISABLE_SIG Y; GPG_REQUIRE_SIG N alone does not turn the check off
	// (a signer list then still decides), and with no signer list
	// fwknopd refuses to start.
	requireSig, err := f.yes("GPG_REQUIRE_SIG", true)
	if err != nil {
		return err
	}
	s.GPGRequireSig = !disable
	if !requireSig && !disable && !f.has("GPG_REMOTE_ID") && !f.has("GPG_FINGERPRINT_ID") {
		return f.fail("GPG_REQUIRE_SIG", "N without GPG_REMOTE_ID or GPG_FINGERPRINT_ID: fwknopd refuses this stanza; "+
			"GPG_DISABLE_SIG Y turns signature checks off")
	}
	if s.GPGIgnoreSigError, err = f.yes("GPG_IGNORE_SIG_VERIFY_ERROR", false); err != nil {
		return err
	}
	if v, ok := f["GPG_REMOTE_ID"]; ok {
		s.GPGRemoteIDs = splitList(v.value)
	}
	if v, ok := f["GPG_FINGERPRINT_ID"]; ok {
		s.GPGFingerprints = splitList(v.value)
	}
	if s.GPGRequireSig && len(s.GPGRemoteIDs) == 0 && len(s.GPGFingerprints) == 0 {
		return f.fail("GPG_DECRYPT_ID", "signatures are required: name the signers with GPG_REMOTE_ID or GPG_FINGERPRINT_ID (or GPG_DISABLE_SIG Y)")
	}
	return nil
}

// readLimits reads timeouts, source and username requirements and expiry.
func readLimits(s *Stanza, f fields) error {
	var err error
	if s.FWAccessTimeout, err = f.seconds("FW_ACCESS_TIMEOUT", DefaultFWAccessTimeout); err != nil {
		return err
	}
	if s.MaxFWTimeout, err = f.seconds("MAX_FW_TIMEOUT", DefaultMaxFWTimeout); err != nil {
		return err
	}
	if v, ok := f["REQUIRE_SOURCE"]; ok {
		f["REQUIRE_SOURCE_ADDRESS"] = v
	}
	if s.RequireSource, err = f.yes("REQUIRE_SOURCE_ADDRESS", false); err != nil {
		return err
	}
	s.RequireUsername = f["REQUIRE_USERNAME"].value
	if v, ok := f["ACCESS_EXPIRE"]; ok {
		t, err := parseExpire(v.value)
		if err != nil {
			return f.fail("ACCESS_EXPIRE", "%q: want MM/DD/YYYY", v.value)
		}
		s.AccessExpire = t
	}
	if v, ok := f["ACCESS_EXPIRE_EPOCH"]; ok {
		n, err := strconv.ParseInt(v.value, 10, 64)
		if err != nil {
			return f.fail("ACCESS_EXPIRE_EPOCH", "%q: want seconds since 1970", v.value)
		}
		s.AccessExpire = time.Unix(n, 0)
	}
	return nil
}

// parseExpire reads ACCESS_EXPIRE as fwknopd's strptime("%m/%d/%Y") does:
// one or two digits of month and day, the year as written ("01" is the
// year 1, long expired), local time.
func parseExpire(s string) (time.Time, error) {
	f := strings.Split(s, "/")
	if len(f) != 3 {
		return time.Time{}, errors.New("want MM/DD/YYYY")
	}
	var n [3]int
	for i, part := range f {
		v, err := strconv.Atoi(part)
		if err != nil || v < 0 || len(part) == 0 || len(part) > 4 {
			return time.Time{}, errors.New("want MM/DD/YYYY")
		}
		n[i] = v
	}
	if n[0] < 1 || n[0] > 12 || n[1] < 1 || n[1] > 31 {
		return time.Time{}, errors.New("want MM/DD/YYYY")
	}
	return time.Date(n[2], time.Month(n[0]), n[1], 0, 0, 0, 0, time.Local), nil
}

// readCommands reads CMD_CYCLE_* and ENABLE_CMD_EXEC with its identity.
func readCommands(s *Stanza, f fields) error {
	s.CmdCycleOpen, s.CmdCycleClose = f["CMD_CYCLE_OPEN"].value, f["CMD_CYCLE_CLOSE"].value
	if strings.EqualFold(s.CmdCycleClose, "NONE") {
		s.CmdCycleClose = ""
	}
	var err error
	if s.CmdCycleTimer, err = f.seconds("CMD_CYCLE_TIMER", 0); err != nil {
		return err
	}
	if (s.CmdCycleOpen == "") != (f["CMD_CYCLE_CLOSE"].value == "") {
		return f.fail("CMD_CYCLE_OPEN", "CMD_CYCLE_OPEN and CMD_CYCLE_CLOSE go together (CLOSE may be NONE)")
	}
	if s.CmdCycleClose != "" && s.CmdCycleTimer == 0 {
		return f.fail("CMD_CYCLE_CLOSE", "needs CMD_CYCLE_TIMER")
	}
	if s.EnableCmdExec, err = f.yes("ENABLE_CMD_EXEC", false); err != nil {
		return err
	}
	s.CmdExecUser, s.CmdExecGroup = f["CMD_EXEC_USER"].value, f["CMD_EXEC_GROUP"].value
	// An unknown identity is found now, not when a command would run (and
	// never falls back to the daemon's own, root).
	if s.CmdExecUser != "" {
		if _, err := user.Lookup(s.CmdExecUser); err != nil {
			return f.fail("CMD_EXEC_USER", "%q: no such user", s.CmdExecUser)
		}
	}
	if s.CmdExecGroup != "" {
		// fwknopd 2.6.10 (access.c add_acc_group) looks the value up as a
		// user and takes that user's primary group: CMD_EXEC_GROUP nobody
		// is nogroup on Debian, which has no group "nobody". The group is
		// kept as that number.
		u, err := user.Lookup(s.CmdExecGroup)
		if err != nil {
			return f.fail("CMD_EXEC_GROUP", "%q: no such user (fwknopd reads CMD_EXEC_GROUP as a user and takes its primary group)",
				s.CmdExecGroup)
		}
		s.CmdExecGroup = u.Gid
	}
	return nil
}

func keyValue(raw map[string]rawValue, plain, b64kw string, fail func(string, string, ...any) error) ([]byte, string, error) {
	p, hasP := raw[plain]
	b, hasB := raw[b64kw]
	switch {
	case hasP && hasB:
		return nil, b64kw, fail(b64kw, "give %s or %s, not both", plain, b64kw)
	case hasP:
		return []byte(p.value), plain, nil
	case hasB:
		k, err := base64.StdEncoding.DecodeString(b.value)
		if err != nil || len(k) == 0 {
			return nil, b64kw, fail(b64kw, "not valid base64")
		}
		return k, b64kw, nil
	}
	return nil, "", nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// readNAT reads the gateway keywords.
func readNAT(s *Stanza, f fields) error {
	var err error
	for _, kw := range []string{"FORCE_NAT", "FORCE_SNAT", "FORCE_MASQUERADE", "DISABLE_DNAT", "FORWARD_ALL"} {
		if v, ok := f[kw]; ok && (s.NATLine == 0 || v.line < s.NATLine) {
			s.NATFile, s.NATLine = v.file, v.line
		}
	}
	if v, ok := f["FORCE_NAT"]; ok {
		// fwknopd: "FORCE_NAT <ip> <port>".
		fs := strings.Fields(v.value)
		var a netip.Addr
		var p uint64
		if len(fs) == 2 {
			a, err = netip.ParseAddr(fs[0])
			if err == nil {
				p, err = strconv.ParseUint(fs[1], 10, 16)
			}
		}
		if len(fs) != 2 || err != nil || p == 0 || !a.IsGlobalUnicast() {
			return f.fail("FORCE_NAT", "%q: want an internal address and a port, such as 192.168.10.2 22", v.value)
		}
		s.ForceNAT = netip.AddrPortFrom(a.Unmap(), uint16(p))
	}
	if v, ok := f["FORCE_SNAT"]; ok {
		a, err := netip.ParseAddr(strings.TrimSpace(v.value))
		if err != nil || !a.IsGlobalUnicast() {
			return f.fail("FORCE_SNAT", "%q: want the address to translate sources to", v.value)
		}
		s.ForceSNAT = a.Unmap()
	}
	if s.ForceMasquerade, err = f.yes("FORCE_MASQUERADE", false); err != nil {
		return err
	}
	if s.DisableDNAT, err = f.yes("DISABLE_DNAT", false); err != nil {
		return err
	}
	if s.ForwardAll, err = f.yes("FORWARD_ALL", false); err != nil {
		return err
	}
	if (s.ForceSNAT.IsValid() || s.ForceMasquerade) && !s.ForceNAT.IsValid() {
		if !s.ForwardAll {
			kw := "FORCE_SNAT"
			if !s.ForceSNAT.IsValid() {
				kw = "FORCE_MASQUERADE"
			}
			// fwknopd drops the stanza the same way (acc_data_is_valid).
			return f.fail(kw, "needs FORCE_NAT or FORWARD_ALL in the same stanza")
		}
		// fwknopd: FORWARD_ALL with a translated source and no FORCE_NAT
		// is FORCE_NAT 0.0.0.0 0: everything forwarded, nothing DNATed.
		s.ForceNAT = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	}
	return nil
}
