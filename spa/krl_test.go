package spa

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/crypto/ssh"
)

// A KRL made by the real ssh-keygen revokes what ssh-keygen -Q says it
// does: serials (single, a range, a dense run it stores as a bitmap), a
// key ID, a plain key — for its CA only, where it names one.
func TestParseKRL(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("ssh-keygen is missing (openssh-client)")
		}
		t.Skip("ssh-keygen is missing (openssh-client)")
	}
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
		}
	}
	run("-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "ca"), "-C", "ca")
	run("-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "plain"), "-C", "plain")
	spec := "serial: 7\nserial: 10-20\nid: mallory\n"
	for s := 100; s < 160; s += 2 {
		spec += "serial: " + strconv.Itoa(s) + "\n" // dense: a bitmap
	}
	os.WriteFile(filepath.Join(dir, "spec"), []byte(spec), 0o644)
	krl := filepath.Join(dir, "krl")
	run("-q", "-k", "-f", krl, "-s", filepath.Join(dir, "ca.pub"), filepath.Join(dir, "spec"))
	run("-q", "-k", "-u", "-f", krl, filepath.Join(dir, "plain.pub"))
	data, _ := os.ReadFile(krl)
	var r SSHRevocations
	if err := r.ParseKRL(data); err != nil {
		t.Fatal(err)
	}
	caKey := readSigner(t, filepath.Join(dir, "ca"))
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherCA, _ := ssh.NewSignerFromKey(other)
	cert := func(ca ssh.Signer, serial uint64, id string) *ssh.Certificate {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		s, _ := ssh.NewSignerFromKey(priv)
		c := &ssh.Certificate{Key: s.PublicKey(), Serial: serial, KeyId: id, CertType: ssh.UserCert,
			ValidPrincipals: []string{"ops"}, ValidBefore: ssh.CertTimeInfinity}
		if err := c.SignCert(rand.Reader, ca); err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, c := range []struct {
		name string
		cert *ssh.Certificate
		want bool
	}{
		{"serial 7", cert(caKey, 7, "a"), true},
		{"bad serial 8 not listed", cert(caKey, 8, "a"), false},
		{"range start", cert(caKey, 10, "a"), true},
		{"range end", cert(caKey, 20, "a"), true},
		{"bad past the range", cert(caKey, 21, "a"), false},
		{"bitmap member", cert(caKey, 130, "a"), true},
		{"bad bitmap gap", cert(caKey, 131, "a"), false},
		{"key id", cert(caKey, 1, "mallory"), true},
		{"bad same serial, another CA", cert(otherCA, 7, "a"), false},
	} {
		if got := r.CertRevoked(c.cert); got != c.want {
			t.Errorf("%s: CertRevoked = %v, want %v", c.name, got, c.want)
		}
	}
	pub, _ := os.ReadFile(filepath.Join(dir, "plain.pub"))
	plain, _, _, _, _ := ssh.ParseAuthorizedKey(pub)
	if !r.KeyRevoked(plain) {
		t.Error("the plain key is not revoked")
	}
	if r.KeyRevoked(caKey.PublicKey()) {
		t.Error("the CA key is revoked")
	}
	if err := new(SSHRevocations).ParseKRL(data[:len(data)-3]); err == nil {
		t.Error("a truncated KRL parsed")
	}
}

func readSigner(t *testing.T, path string) ssh.Signer {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzKRL: whatever the bytes, ParseKRL returns (no panic, no endless
// loop), and a parsed list answers.
func FuzzKRL(f *testing.F) {
	f.Add([]byte(krlMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r SSHRevocations
		if r.ParseKRL(data) == nil {
			_, priv, _ := ed25519.GenerateKey(rand.Reader)
			s, _ := ssh.NewSignerFromKey(priv)
			r.KeyRevoked(s.PublicKey())
		}
	})
}
