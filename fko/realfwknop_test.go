//go:build linux

package fko

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/internal/netnstest"
)

// TestRealClientPackets decodes packets the real fwknop client builds (-T:
// build and self-check, send nothing; -B: save the packet) with every
// digest and HMAC type, a passphrase key and legacy mode.
func TestRealClientPackets(t *testing.T) {
	netnstest.Require(t, "fwknop")
	dir := t.TempDir()
	key := "abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4="
	hkey := "EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig=="
	tests := []struct {
		name  string
		args  []string
		keys  *Keys
		check func(*Message) bool
	}{
		{"hmac sha256, inner sha256", []string{"--key-base64-rijndael", key, "--key-base64-hmac", hkey, "--use-hmac"},
			&Keys{Key: mustB64(t, key), HMACKey: mustB64(t, hkey)}, nil},
		{"hmac sha512, inner md5", []string{"--key-base64-rijndael", key, "--key-base64-hmac", hkey, "--use-hmac", "-m", "md5", "--hmac-digest-type", "sha512"},
			&Keys{Key: mustB64(t, key), HMACKey: mustB64(t, hkey), HMACType: SHA512}, func(m *Message) bool { return m.Digest == MD5 }},
		{"hmac sha3_256, inner sha3_512", []string{"--key-base64-rijndael", key, "--key-base64-hmac", hkey, "--use-hmac", "-m", "sha3_512", "--hmac-digest-type", "sha3_256"},
			&Keys{Key: mustB64(t, key), HMACKey: mustB64(t, hkey), HMACType: SHA3_256}, func(m *Message) bool { return m.Digest == SHA3_512 }},
		{"hmac sha1, inner sha384", []string{"--key-base64-rijndael", key, "--key-base64-hmac", hkey, "--use-hmac", "-m", "sha384", "--hmac-digest-type", "sha1"},
			&Keys{Key: mustB64(t, key), HMACKey: mustB64(t, hkey), HMACType: SHA1}, func(m *Message) bool { return m.Digest == SHA384 }},
		{"hmac md5, inner sha1", []string{"--key-base64-rijndael", key, "--key-base64-hmac", hkey, "--use-hmac", "-m", "sha1", "--hmac-digest-type", "md5"},
			&Keys{Key: mustB64(t, key), HMACKey: mustB64(t, hkey), HMACType: MD5}, func(m *Message) bool { return m.Digest == SHA1 }},
		{"hmac sha384, inner sha512", []string{"--key-base64-rijndael", key, "--key-base64-hmac", hkey, "--use-hmac", "-m", "sha512", "--hmac-digest-type", "sha384"},
			&Keys{Key: mustB64(t, key), HMACKey: mustB64(t, hkey), HMACType: SHA384}, func(m *Message) bool { return m.Digest == SHA512 }},
		{"hmac sha3_512, inner sha3_256", []string{"--key-base64-rijndael", key, "--key-base64-hmac", hkey, "--use-hmac", "-m", "sha3_256", "--hmac-digest-type", "sha3_512"},
			&Keys{Key: mustB64(t, key), HMACKey: mustB64(t, hkey), HMACType: SHA3_512}, func(m *Message) bool { return m.Digest == SHA3_256 }},
		{"passphrase key, passphrase hmac, client timeout", []string{"--key-rijndael", "fwknoptest", "--key-hmac", "hmactest", "--use-hmac", "-f", "600"},
			&Keys{Key: []byte("fwknoptest"), HMACKey: []byte("hmactest")}, func(m *Message) bool { return m.Type == ClientTimeoutAccessMsg && m.ClientTimeout == 600 }},
		{"legacy mode, no hmac", []string{"--key-rijndael", "short", "-M", "legacy"},
			&Keys{Key: []byte("short"), Mode: LegacyCBC}, nil},
		{"command message", []string{"--key-rijndael", "fwknoptest", "--key-hmac", "hmactest", "--use-hmac", "-C", "uname -a"},
			&Keys{Key: []byte("fwknoptest"), HMACKey: []byte("hmactest")}, func(m *Message) bool { return m.Type == CommandMsg && m.Message == "10.9.9.2,uname -a" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			args := append([]string{"-A", "tcp/22", "-a", "10.9.9.2", "-D", "127.0.0.1", "-T", "-B", file,
				"--no-rc-file", "--no-save-args"}, tt.args...)
			if tt.name == "command message" {
				args = append([]string{"-a", "10.9.9.2", "-D", "127.0.0.1", "-T", "-B", file, "--no-rc-file", "--no-save-args"}, tt.args...)
			}
			cmd := exec.Command("fwknop", args...)
			cmd.Env = append(os.Environ(), "HOME="+dir)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("fwknop: %v\n%s", err, out)
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			wire := strings.TrimSpace(string(data))
			if err := Preprocess([]byte(wire)); err != nil {
				t.Fatalf("preprocess %q: %v", wire, err)
			}
			k := tt.keys
			m, _, err := k.Open(wire)
			if err != nil {
				t.Fatalf("open %q: %v", wire, err)
			}
			if !strings.HasPrefix(m.Message, "10.9.9.2,") || (tt.check != nil && !tt.check(m)) {
				t.Fatalf("decoded %+v", m)
			}
		})
	}
}
