package fko

import (
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/port"
)

func TestReadAccess(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "more.conf"), []byte(`
SOURCE              198.18.0.0/16
KEY                 fwknoptest
HMAC_KEY            hmactest
HMAC_DIGEST_TYPE    sha512
ENCRYPTION_MODE     legacy
REQUIRE_SOURCE_ADDRESS Y
REQUIRE_USERNAME    alice
ACCESS_EXPIRE_EPOCH 1900000000
ENABLE_CMD_EXEC     Y
CMD_EXEC_USER       nobody
`), 0o600)
	main := filepath.Join(dir, "access.conf")
	os.WriteFile(main, []byte(`# fwknopd access.conf
SOURCE              ANY
DESTINATION         198.18.0.1, 2001:db8::1
OPEN_PORTS          tcp/22, udp/53
RESTRICT_PORTS      tcp/23
KEY_BASE64          abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4=
HMAC_KEY_BASE64     EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig==
FW_ACCESS_TIMEOUT   10
MAX_FW_TIMEOUT      60
CMD_CYCLE_OPEN      /usr/sbin/ipset add allow $IP,$PROTO:$PORT timeout $TIMEOUT
CMD_CYCLE_CLOSE     NONE

%include more.conf
`), 0o600)
	ss, err := ReadAccess(main)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 2 {
		t.Fatalf("%d stanzas", len(ss))
	}
	a, b := ss[0], ss[1]
	if len(a.Source) != 2 || len(a.Destination) != 2 || len(a.OpenPorts) != 2 || a.FWAccessTimeout != 10 ||
		a.MaxFWTimeout != 60 || a.Rijndael == nil || a.Rijndael.HMACType != SHA256 || a.CmdCycleClose != "" || a.CmdCycleOpen == "" {
		t.Fatalf("first stanza %+v", a)
	}
	if a.PortAllowed(port.Spec{Proto: port.TCP, Num: 23}) || !a.PortAllowed(port.Spec{Proto: port.UDP, Num: 53}) ||
		a.PortAllowed(port.Spec{Proto: port.TCP, Num: 80}) {
		t.Fatal("OPEN_PORTS / RESTRICT_PORTS")
	}
	if b.Line != 2 || !strings.HasSuffix(b.File, "more.conf") || b.Rijndael.Mode != LegacyCBC || b.Rijndael.HMACType != SHA512 ||
		!b.RequireSource || b.RequireUsername != "alice" || !b.EnableCmdExec || b.CmdExecUser != "nobody" ||
		b.FWAccessTimeout != DefaultFWAccessTimeout || b.OpenPorts != nil {
		t.Fatalf("included stanza %+v", b)
	}
	src, dst := mustAddr("198.18.0.2"), mustAddr("198.18.0.1")
	if !a.Matches(src, dst, time.Now()) || a.Matches(src, mustAddr("198.18.0.9"), time.Now()) {
		t.Fatal("DESTINATION")
	}
	if !b.Matches(src, dst, time.Unix(1_800_000_000, 0)) || b.Matches(src, dst, time.Unix(1_900_000_001, 0)) ||
		b.Matches(mustAddr("203.0.113.1"), dst, time.Unix(1_800_000_000, 0)) {
		t.Fatal("SOURCE / ACCESS_EXPIRE_EPOCH")
	}
}

func TestAccessErrors(t *testing.T) {
	for _, tt := range []struct{ name, conf, want string }{
		{"bad FORWARD_ALL", "SOURCE ANY\nKEY k\nFORWARD_ALL maybe\n", "a.conf:3: FORWARD_ALL"},
		{"bad FORCE_MASQUERADE alone", "SOURCE ANY\nKEY k\nFORCE_MASQUERADE Y\n", "a.conf:3: FORCE_MASQUERADE: needs FORCE_NAT or FORWARD_ALL"},
		{"bad FORCE_NAT", "SOURCE ANY\nKEY k\nFORCE_NAT 192.168.1.2\n", "a.conf:3: FORCE_NAT: \"192.168.1.2\": want an internal address and a port"},
		{"bad FORCE_NAT port", "SOURCE ANY\nKEY k\nFORCE_NAT 192.168.1.2 70000\n", "a.conf:3: FORCE_NAT"},
		{"bad FORCE_SNAT", "SOURCE ANY\nKEY k\nFORCE_SNAT 0.0.0.0\n", "a.conf:3: FORCE_SNAT"},
		{"bad FORCE_MASQUERADE", "SOURCE ANY\nKEY k\nFORCE_MASQUERADE maybe\n", "a.conf:3: FORCE_MASQUERADE"},
		{"bad same keys", "SOURCE ANY\nKEY same\nHMAC_KEY same\n", "a.conf:3: HMAC_KEY: the HMAC key must differ"},
		{"bad no key", "SOURCE ANY\nOPEN_PORTS tcp/22\n", "a.conf:1: SOURCE: stanza has no KEY"},
		{"bad port", "SOURCE ANY\nKEY k\nOPEN_PORTS tcp/99999\n", "a.conf:3: OPEN_PORTS"},
		{"bad source", "SOURCE nowhere\nKEY k\n", "a.conf:1: SOURCE"},
		{"bad digest", "SOURCE ANY\nKEY k\nHMAC_DIGEST_TYPE sha999\n", "a.conf:3: HMAC_DIGEST_TYPE"},
		{"bad mode", "SOURCE ANY\nKEY k\nENCRYPTION_MODE ecb\n", "a.conf:3: ENCRYPTION_MODE: encryption mode \"ecb\" is not supported"},
		{"bad unknown exec user", "SOURCE ANY\nKEY k\nENABLE_CMD_EXEC Y\nCMD_EXEC_USER no-such-user-here\n", "a.conf:4: CMD_EXEC_USER: \"no-such-user-here\": no such user"},
		{"bad unknown exec group", "SOURCE ANY\nKEY k\nENABLE_CMD_EXEC Y\nCMD_EXEC_GROUP no-such-group-here\n", "a.conf:4: CMD_EXEC_GROUP"},
		{"bad long key", "SOURCE ANY\nKEY 012345678901234567890123456789012\n", "a.conf:2: KEY: a Rijndael key is at most 32 bytes"},
		{"bad gpg without signer", "SOURCE ANY\nGPG_DECRYPT_ID ABCD1234\nGPG_ALLOW_NO_PW Y\n", "a.conf:2: GPG_DECRYPT_ID: signatures are required"},
		{"bad empty", "# nothing\n", "no SOURCE stanza"},
		{"bad missing include", "SOURCE ANY\nKEY k\n%include /nonexistent/x.conf\n", "a.conf:3: %include"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAccessConf("a.conf", []byte(tt.conf))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func FuzzAccessConf(f *testing.F) {
	f.Add([]byte("SOURCE ANY\nKEY_BASE64 abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4=\nHMAC_KEY_BASE64 EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig==\nOPEN_PORTS tcp/22\n"))
	f.Add([]byte("SOURCE 10.0.0.0/8, ::1\nGPG_DECRYPT_ID X\nGPG_DECRYPT_PW y\nGPG_REMOTE_ID Z\nACCESS_EXPIRE 12/31/2030\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ss, err := ParseAccessConf("f.conf", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.conf") {
				t.Fatalf("error without file: %v", err)
			}
			return
		}
		for _, s := range ss {
			if s.Rijndael == nil && s.GPG == nil {
				t.Fatal("stanza without keys accepted")
			}
		}
	})
}

func FuzzRC(f *testing.F) {
	f.Add([]byte("[default]\nDIGEST_TYPE sha512\n[office]\nSPA_SERVER 198.18.0.1\nACCESS tcp/22\nUSE_HMAC Y\n"))
	f.Add([]byte("[\n]\n[x]\n\tKEY\tvalue with spaces\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rc, err := ParseRC("f.rc", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.rc:") {
				t.Fatalf("error without file and line: %v", err)
			}
			return
		}
		for name, vars := range rc {
			for k, v := range vars {
				if k != strings.ToUpper(k) || v.Line < 1 || name == "" {
					t.Fatalf("stanza %q var %q %+v", name, k, v)
				}
			}
		}
	})
}

// GnuPG signature policy as fwknopd 2.6.10 has it: only GPG_DISABLE_SIG Y
// turns the signer check off; GPG_REQUIRE_SIG N with a signer list still
// checks the signer, and without one the stanza is refused.
func TestGPGSignaturePolicy(t *testing.T) {
	base := "SOURCE ANY\nGPG_DECRYPT_ID ABCD1234\nGPG_ALLOW_NO_PW Y\n"
	for _, tt := range []struct {
		name, extra string
		require     bool
		err         string
	}{
		{"require N with a signer list still checks", "GPG_REQUIRE_SIG N\nGPG_REMOTE_ID 11223344\n", true, ""},
		{"default with a signer list", "GPG_REMOTE_ID 11223344\n", true, ""},
		{"disable sig", "GPG_DISABLE_SIG Y\n", false, ""},
		{"bad require N without signers", "GPG_REQUIRE_SIG N\n", false, "a.conf:4: GPG_REQUIRE_SIG"},
		{"bad default without signers", "", false, "GPG_REMOTE_ID or GPG_FINGERPRINT_ID"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ss, err := ParseAccessConf("a.conf", []byte(base+tt.extra))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || ss[0].GPGRequireSig != tt.require {
				t.Fatalf("GPGRequireSig %v, %v; want %v", ss[0].GPGRequireSig, err, tt.require)
			}
		})
	}
}

// access.conf syntax fwknopd accepts (files from fwknop's own test suite):
// ';' comments, values ending at ';', KEYWORD: with a colon, dotted
// netmasks, two-digit years, FW_ACCESS_TIMEOUT 0, unknown keywords
// (warned about with file:line), %include from the working directory,
// %include_folder reading only *.conf.
func TestAccessLeniency(t *testing.T) {
	dir := t.TempDir()
	var warnings []string
	os.WriteFile(filepath.Join(dir, "a.conf"), []byte(`; a comment
SOURCE: 10.0.0.0/255.0.0.0;   ### trailing comment
KEY:    sekrit
FW_ACCESS_TIMEOUT 0
ACCESS_EXPIRE 3/10/01
OPEN_PORT tcp/22
%include_folder sub
`), 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "b.conf"), []byte("SOURCE ANY\nKEY k2\nACCESS_EXPIRE_EPOCH 1111111111;  ### c\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "sub", "notes.txt"), []byte("not a stanza\n"), 0o644)
	ss, err := ReadAccessWarn(filepath.Join(dir, "a.conf"), func(w string) { warnings = append(warnings, w) })
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 2 || ss[0].Source[0] != netip.MustParsePrefix("10.0.0.0/8") || string(ss[0].Rijndael.Key) != "sekrit" ||
		ss[0].FWAccessTimeout != DefaultFWAccessTimeout || ss[0].AccessExpire.Year() != 1 ||
		ss[1].AccessExpire.Unix() != 1111111111 {
		t.Fatalf("stanzas %+v %+v", ss[0], ss[1])
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "a.conf:6: OPEN_PORT: unknown") {
		t.Fatalf("warnings %q", warnings)
	}
	// %include relative to the working directory, as fwknopd resolves it.
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(dir)
	os.WriteFile(filepath.Join(dir, "top.conf"), []byte("%include sub/b.conf\n"), 0o644)
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "main.conf"), []byte("%include sub/b.conf\n"), 0o644)
	if ss, err := ReadAccess(filepath.Join(other, "main.conf")); err != nil || len(ss) != 1 {
		t.Fatalf("%%include from the working directory: %v %v", ss, err)
	}
}

// %include_keys: a stanza's keys from a file of their own; only key
// keywords count there (others are warned about and ignored, as fwknopd
// does); errors name the keys file and line.
func TestIncludeKeys(t *testing.T) {
	dir := t.TempDir()
	var warnings []string
	warn := func(w string) { warnings = append(warnings, w) }
	os.WriteFile(filepath.Join(dir, "alice.keys"), []byte("# alice\nKEY_BASE64: c2Vrcml0LXNla3JpdA==\nHMAC_KEY hmac-secret\nOPEN_PORTS tcp/9999\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "access.conf"), []byte("SOURCE ANY\n%include_keys alice.keys\nOPEN_PORTS tcp/22\n"), 0o600)
	ss, err := ReadAccessWarn(filepath.Join(dir, "access.conf"), warn)
	if err != nil {
		t.Fatal(err)
	}
	if string(ss[0].Rijndael.Key) != "sekrit-sekrit" || string(ss[0].Rijndael.HMACKey) != "hmac-secret" || len(ss[0].OpenPorts) != 1 || ss[0].OpenPorts[0].Num != 22 {
		t.Fatalf("stanza %+v", ss[0])
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], "mode 0644") || !strings.Contains(warnings[1], "alice.keys:4: OPEN_PORTS") {
		t.Fatalf("warnings %q", warnings)
	}
	for name, c := range map[string]struct{ access, keys, want string }{
		"missing file":    {"SOURCE ANY\n%include_keys nope.keys\n", "", "access.conf:2"},
		"outside stanza":  {"%include_keys k.keys\nSOURCE ANY\nKEY x\n", "KEY y\n", "access.conf:1: %include_keys: outside a SOURCE stanza"},
		"bad base64 key":  {"SOURCE ANY\n%include_keys k.keys\n", "\n\nKEY_BASE64 not*base64\n", "k.keys:3: KEY_BASE64"},
		"keyword, no val": {"SOURCE ANY\n%include_keys k.keys\n", "KEY\n", "k.keys:1: KEY: needs a value"},
	} {
		os.WriteFile(filepath.Join(dir, "k.keys"), []byte(c.keys), 0o600)
		os.WriteFile(filepath.Join(dir, "access.conf"), []byte(c.access), 0o600)
		if _, err := ReadAccess(filepath.Join(dir, "access.conf")); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", name, err, c.want)
		}
	}
}

func TestAccessNATKeywords(t *testing.T) {
	ss, err := ParseAccessConf("a.conf", []byte("SOURCE ANY\nKEY k\nOPEN_PORTS tcp/22\nFORCE_NAT 10.77.1.2 2200\nFORCE_SNAT 10.77.1.9\nDISABLE_DNAT Y\n"+
		"SOURCE ANY\nKEY k2\nFORCE_MASQUERADE Y\nFORWARD_ALL Y\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	if s.ForceNAT != netip.MustParseAddrPort("10.77.1.2:2200") || s.ForceSNAT != netip.MustParseAddr("10.77.1.9") ||
		!s.DisableDNAT || s.ForceMasquerade || s.NATLine != 4 {
		t.Errorf("first stanza: %+v", s)
	}
	if s := ss[1]; !s.ForceMasquerade || !s.ForwardAll || !s.ForceNAT.Addr().IsUnspecified() || s.NATLine != 9 {
		t.Errorf("second stanza: %+v", s)
	}
}

// CMD_EXEC_GROUP names a user whose primary group is meant, as fwknopd
// 2.6.10 reads it (access.c add_acc_group): "nobody" works on Debian,
// which has a user nobody (group nogroup) and no group nobody.
func TestCmdExecGroupIsAUsersPrimaryGroup(t *testing.T) {
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody here")
	}
	ss, err := ParseAccessConf("a.conf", []byte("SOURCE ANY\nKEY k1234567\nENABLE_CMD_EXEC Y\nCMD_EXEC_USER nobody\nCMD_EXEC_GROUP nobody\n"))
	if err != nil {
		t.Fatal(err)
	}
	if ss[0].CmdExecGroup != u.Gid {
		t.Fatalf("CMD_EXEC_GROUP nobody = %q, want nobody's primary group %s", ss[0].CmdExecGroup, u.Gid)
	}
	_, err = ParseAccessConf("a.conf", []byte("SOURCE ANY\nKEY k1234567\nENABLE_CMD_EXEC Y\nCMD_EXEC_GROUP no-such-user-here\n"))
	if err == nil || !strings.Contains(err.Error(), "a.conf:4") || !strings.Contains(err.Error(), "CMD_EXEC_GROUP") {
		t.Fatalf("an unknown user: %v", err)
	}
}

// A keyword before the first SOURCE belongs to no stanza: fwknopd skips
// it, and so does postern, with a warning naming its place.
func TestKeywordBeforeFirstSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.conf")
	os.WriteFile(path, []byte("KEY stray\nOPEN_PORTS tcp/80\nSOURCE ANY\nKEY k1234567\nOPEN_PORTS tcp/22\n"), 0o600)
	var warned []string
	ss, err := ReadAccessWarn(path, func(s string) { warned = append(warned, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 || ss[0].Rijndael == nil || string(ss[0].Rijndael.Key) != "k1234567" || len(warned) != 2 || !strings.Contains(warned[0], "access.conf:1: KEY") {
		t.Fatalf("stanzas %+v, warnings %q", ss, warned)
	}
}
