package client

import (
	"fmt"
	"github.com/postern/postern/fko"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseKnockArgs(t *testing.T) {
	tests := []struct {
		args []string
		udp  bool
		want string
	}{
		{[]string{"7000", "8000:udp", "9000:tcp"}, false, "[tcp/7000 udp/8000 tcp/9000]"},
		{[]string{"7000", "8000:tcp"}, true, "[udp/7000 tcp/8000]"},
		{[]string{"7000:sctp"}, false, "[tcp/7000]"}, // knock(1): any other suffix is TCP
		{[]string{"64:icmp", "7000"}, false, "[icmp/64 tcp/7000]"},
	}
	for _, tt := range tests {
		got, err := ParseKnockArgs(tt.args, tt.udp)
		if err != nil || fmt.Sprint(got) != tt.want {
			t.Errorf("ParseKnockArgs(%q, %v) = %v, %v; want %s", tt.args, tt.udp, got, err, tt.want)
		}
	}
	for _, bad := range [][]string{nil, {"70000"}, {"x"}, {"2000:icmp"}} {
		if _, err := ParseKnockArgs(bad, false); err == nil {
			t.Errorf("ParseKnockArgs(%q) accepted", bad)
		}
	}
}

func TestLoadProfile(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "s")
	os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600)
	path := filepath.Join(dir, "client.toml")
	os.WriteFile(path, []byte(`[[door]]
name = "ssh"
host = "server.example.org"
sequence = ["tcp/7000", "udp/8000", "icmp/64"]
delay = "50ms"

[[door]]
name = "rot"
secret_file = "`+secret+`"
period = "60s"
port_range = "30000-30999"
`), 0o600)
	p, err := LoadProfile(path, "ssh")
	if err != nil || p.Host != "server.example.org" || fmt.Sprint(p.Hits) != "[tcp/7000 udp/8000 icmp/64]" || p.Delay != 50*time.Millisecond {
		t.Fatalf("%+v %v", p, err)
	}
	r, err := LoadProfile(path, "rot")
	if err != nil || r.Rotating == nil || r.Rotating.Period != time.Minute || r.Rotating.Lo != 30000 || r.Rotating.Length != 4 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := LoadProfile(path, "nope"); err == nil || !strings.Contains(err.Error(), `no door called "nope"`) {
		t.Fatalf("missing door: %v", err)
	}
	os.WriteFile(path, []byte("[[door]]\nname = \"x\"\nsequense = []\n"), 0o600)
	if _, err := LoadProfile(path, "x"); err == nil || !strings.Contains(err.Error(), path+":3: door.sequense: unknown key") {
		t.Fatalf("unknown key: %v", err)
	}
	os.Chmod(secret, 0o644)
	if _, err := NewRotating(secret, "", 0, "", ""); err == nil {
		t.Fatal("world-readable secret accepted")
	}
}

func TestParseFwknopArgs(t *testing.T) {
	r, err := ParseFwknopArgs([]string{"-A", "tcp/22", "-atcp", "-s", "--destination=198.18.0.1", "--gpg-recip", "SRV",
		"--gpg-sign", "CLI", "--use-hmac", "--hmac-digest-type", "sha512", "-n", "office", "--no-rc-file", "-T", "-f", "60"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Settings["ACCESS"].Value != "tcp/22" || r.Settings["ALLOW_IP"].Value != "source" || r.Settings["SPA_SERVER"].Value != "198.18.0.1" ||
		r.Settings["GPG_RECIPIENT"].Value != "SRV" || r.Settings["GPG_SIGNER"].Value != "CLI" || r.Settings["USE_HMAC"].Value != "Y" ||
		r.Settings["FW_TIMEOUT"].Value != "60" || r.Stanza != "office" || r.RCFile != "" || !r.Test {
		t.Fatalf("%+v", r)
	}
	for _, v := range []string{"-V", "--version"} {
		if r, err := ParseFwknopArgs([]string{v}); err != nil || !r.Version {
			t.Errorf("%s: %+v %v", v, r, err)
		}
	}
	for _, bad := range [][]string{{"--gpg"}, {"--nonsense"}, {"-A"}, {"-sT"}, {"stray"}} {
		if _, err := ParseFwknopArgs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestFwknopRCLayers(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, ".fwknoprc")
	os.WriteFile(rc, []byte(`[default]
DIGEST_TYPE         sha512
SPA_SERVER_PORT     62202

[office]
SPA_SERVER          198.18.0.1
ACCESS              tcp/22
ALLOW_IP            198.18.0.2
KEY_BASE64          abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4=
HMAC_KEY_BASE64     EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig==
USE_HMAC            Y
VERBOSE             Y

[odd]
SPA_SOURCE_PORT     12345
`), 0o600)
	r, _ := ParseFwknopArgs([]string{"--rc-file", rc, "-n", "office", "--key-rijndael", "override"})
	s, err := r.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if s["KEY"].Value != "override" || s["KEY_BASE64"].Value != "" || s["DIGEST_TYPE"].Value != "sha512" {
		t.Fatalf("layers: %+v", s)
	}
	p, keys, err := BuildFwknop(s, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if p.To != "198.18.0.1:62202" || string(keys.Key) != "override" || p.Message.Message != "198.18.0.2,tcp/22" {
		t.Fatalf("%+v", p)
	}
	if _, _, err := keys.Open(p.Wire); err != nil {
		t.Fatal(err)
	}
	r, _ = ParseFwknopArgs([]string{"--rc-file", rc, "-n", "odd", "-A", "tcp/22", "-s", "-D", "x", "--key-rijndael", "k"})
	s, _ = r.Resolve()
	if _, _, err := BuildFwknop(s, time.Now()); err == nil || !strings.Contains(err.Error(), rc+":15: SPA_SOURCE_PORT: not supported") {
		t.Fatalf("unsupported variable: %v", err)
	}
}

func TestLoadSPAProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "client.toml")
	os.WriteFile(path, []byte(`[[spa]]
name = "office"
host = "server.example.org"
key_file = "/k"
server_key = "S…"
open = ["tcp/22", "tcp/443"]
duration = "1m"
wait = "0s"

[[spa]]
name = "lab"
host = "lab.example.org"
key_file = "/k"
server_key = "S…"
`), 0o600)
	p, err := LoadSPAProfile(path, "office")
	if err != nil || p.Host != "server.example.org" || len(p.Open) != 2 || p.Duration != time.Minute || p.Wait != 0 || p.Port != 62201 {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = LoadSPAProfile(path, "lab.example.org") // by host, for ProxyCommand %h
	if err != nil || p.Name != "lab" || fmt.Sprint(p.Open) != "[tcp/22]" || p.Wait != 50*time.Millisecond {
		t.Fatalf("by host: %+v %v", p, err)
	}
	if p, err := LoadSPAProfile(path, "nowhere"); p != nil || err != nil {
		t.Fatalf("missing: %+v %v", p, err)
	}
	if p, err := LoadSPAProfile(filepath.Join(t.TempDir(), "none.toml"), "x"); p != nil || err != nil {
		t.Fatalf("no file: %+v %v", p, err)
	}
	os.WriteFile(path, []byte("[[spa]]\nname = \"x\"\nhost = \"h\"\n"), 0o600)
	if _, err := LoadSPAProfile(path, "x"); err == nil {
		t.Fatal("profile without keys accepted")
	}
}

// FuzzClientInput: any client.toml text and any fwknop command line give a
// value or an error naming where, never a panic.
func FuzzClientInput(f *testing.F) {
	f.Add([]byte("[[spa]]\nname = \"o\"\nhost = \"h\"\nkey_file = \"/k\"\nserver_key = \"S\"\nopen = [\"tcp/22\"]\n[[door]]\nname = \"d\"\nsequence = [\"tcp/1\"]\n[[covert]]\nname = \"c\"\nport = 4444\n"),
		"-A tcp/22 -a 10.9.9.2 -D host --use-hmac --gpg-recip X")
	f.Add([]byte("[[door]]\nname = \"d\"\nsecret_file = \"/nonexistent\"\n"), "--access=tcp/22 -s -n x --rc-file")
	f.Fuzz(func(t *testing.T, toml []byte, args string) {
		path := filepath.Join(t.TempDir(), "client.toml")
		if err := os.WriteFile(path, toml, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, load := range []func() error{
			func() error { _, err := LoadProfile(path, "d"); return err },
			func() error { _, err := LoadSPAProfile(path, "o"); return err },
			func() error { _, err := LoadCovertProfile(path, "c"); return err },
		} {
			if err := load(); err != nil && !strings.Contains(err.Error(), path) && !strings.Contains(err.Error(), "nonexistent") {
				t.Fatalf("error without the file: %v", err)
			}
		}
		r, err := ParseFwknopArgs(strings.Fields(args))
		if err != nil {
			return
		}
		r.RCFile = ""
		r.Stanza = ""
		// GnuPG settings would start the real gpg: not from a fuzzer.
		if s, err := r.Resolve(); err == nil && s["GPG_RECIPIENT"].Value == "" {
			BuildFwknop(s, time.Now())
		}
	})
}

// As the fwknop client: an HMAC key turns the HMAC on without --use-hmac;
// USE_HMAC N turns it off; equal encryption and HMAC keys are refused.
func TestFwknopHMACFollowsTheKey(t *testing.T) {
	build := func(args ...string) (*fko.Keys, error) {
		t.Helper()
		req, err := ParseFwknopArgs(append([]string{"--no-rc-file", "-A", "tcp/22", "-a", "198.18.0.2", "-D", "198.18.0.1"}, args...))
		if err != nil {
			t.Fatal(err)
		}
		s, err := req.Resolve()
		if err != nil {
			t.Fatal(err)
		}
		_, keys, err := BuildFwknop(s, time.Now())
		return keys, err
	}
	keys, err := build("--key-base64-rijndael", "YWJjZGVmZ2hpamtsbW5vcA==", "--key-base64-hmac", "aG1hYy1rZXktaG1hYy1rZXk=")
	if err != nil || len(keys.HMACKey) == 0 {
		t.Fatalf("an HMAC key without --use-hmac: HMAC %q, %v", keys.HMACKey, err)
	}
	if _, err := build("--key-rijndael", "same-key-1234", "--key-hmac", "same-key-1234"); err == nil {
		t.Fatal("equal encryption and HMAC keys accepted")
	}
	if keys, err := build("--key-rijndael", "only-a-key"); err != nil || len(keys.HMACKey) != 0 {
		t.Fatalf("no HMAC key: %v %v", keys, err)
	}
}

// .fwknoprc syntax fwknop accepts: "VAR: value", RESOLVE_IP_HTTP N, the
// GnuPG variables (GPG_EXE, GPG_NO_SIGNING_PW, GPG_SIGNING_PW_BASE64).
func TestFwknopRCSyntax(t *testing.T) {
	rc := filepath.Join(t.TempDir(), ".fwknoprc")
	os.WriteFile(rc, []byte(`[default]
SPA_SERVER:         198.18.0.1
ACCESS:             tcp/22
ALLOW_IP            198.18.0.2
RESOLVE_IP_HTTP     N
GPG_RECIPIENT       ABCD1234
GPG_SIGNER          EF567890
GPG_EXE             /usr/local/bin/gpg2
GPG_NO_SIGNING_PW   N
GPG_SIGNING_PW_BASE64 c2lnbmluZy1wYXNz
`), 0o600)
	r, err := ParseFwknopArgs([]string{"--rc-file", rc})
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.check(); err != nil {
		t.Fatalf("rc refused: %v", err)
	}
	if _, err := s.destination(); err != nil {
		t.Fatal(err)
	}
	keys, err := s.keys()
	if err != nil || keys.GPG == nil || keys.GPG.Exe != "/usr/local/bin/gpg2" || keys.GPG.SignerPW != "signing-pass" {
		t.Fatalf("GnuPG settings %+v %v", keys, err)
	}
}
