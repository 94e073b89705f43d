package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/spa"
)

// genkey -o FILE: the key is born readable by its owner only, the public
// key is printed, and an existing file is never overwritten.
func TestGenkeyToFile(t *testing.T) {
	for _, server := range []bool{false, true} {
		file := filepath.Join(t.TempDir(), "k")
		var out bytes.Buffer
		if err := genkey(server, false, file, &out); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(file)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("server=%v: %v, mode %v; want 0600", server, err, st.Mode().Perm())
		}
		key, _ := os.ReadFile(file)
		pub, err := spa.PublicKeyOf(string(key))
		if err != nil || strings.TrimSpace(out.String()) != pub {
			t.Fatalf("server=%v: printed %q, the file's public key is %q (%v)", server, out.String(), pub, err)
		}
		if err := genkey(server, false, file, &out); err == nil || !strings.Contains(err.Error(), "not overwriting") {
			t.Errorf("server=%v: a second genkey -o the same file: %v", server, err)
		}
		if again, _ := os.ReadFile(file); !bytes.Equal(again, key) {
			t.Errorf("server=%v: the existing key was changed", server)
		}
	}
}

// pubkey with nothing on standard input says so (it once said "not a
// postern private key", which sent people looking at a key they had not
// given it).
func TestPubkeyEmptyInput(t *testing.T) {
	var out bytes.Buffer
	err := pubkey(strings.NewReader(""), &out)
	if err == nil || !strings.Contains(err.Error(), "no key on standard input") {
		t.Fatalf("pubkey < /dev/null: %v", err)
	}
}

// check-config counts what it read: fwknop stanzas and covert doors too.
func TestCheckConfigCounts(t *testing.T) {
	dir := t.TempDir()
	access := filepath.Join(dir, "access.conf")
	os.WriteFile(access, []byte("SOURCE ANY\nKEY k\nOPEN_PORTS tcp/22\n\nSOURCE 10.0.0.0/8\nKEY j\nOPEN_PORTS tcp/443\n"), 0o600)
	cfg := filepath.Join(dir, "p.toml")
	os.WriteFile(cfg, []byte("interface = \"lo\"\n[fwknop]\naccess_file = \""+access+"\"\n"), 0o600)
	var out, errs bytes.Buffer
	if err := checkConfig(cfg, &out, &errs); err != nil {
		t.Fatalf("%v\n%s", err, errs.String())
	}
	if !strings.Contains(out.String(), "0 clients, 0 doors, 0 covert doors, 2 fwknop stanzas, protected tcp/22,tcp/443") {
		t.Errorf("check-config said %q", out.String())
	}
}
