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
