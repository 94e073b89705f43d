package spa

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func sshSigner(t testing.TB, rsaKey bool) ssh.Signer {
	t.Helper()
	var s ssh.Signer
	var err error
	if rsaKey {
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		s, err = ssh.NewSignerFromKey(k)
	} else {
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		s, err = ssh.NewSignerFromKey(k)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func certSigner(t *testing.T, ca, user ssh.Signer, principals []string, serial uint64, from, to time.Time, opts map[string]string) ssh.Signer {
	t.Helper()
	cert := &ssh.Certificate{Key: user.PublicKey(), CertType: ssh.UserCert, KeyId: "alice@fleet", Serial: serial,
		ValidPrincipals: principals, ValidAfter: uint64(from.Unix()), ValidBefore: uint64(to.Unix()),
		Permissions: ssh.Permissions{CriticalOptions: opts}}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	cs, err := ssh.NewCertSigner(cert, user)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// Knocks signed by OpenSSH keys and certificates: every check, in order.
func TestSSHKnocks(t *testing.T) {
	f := newFixture(t, "")
	ed, rs, stranger, ca := sshSigner(t, false), sshSigner(t, true), sshSigner(t, false), sshSigner(t, false)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec, _ := ssh.NewSignerFromKey(ek)
	expired, opsCA, revokedCA := sshSigner(t, false), sshSigner(t, false), sshSigner(t, false)
	revoked := &SSHRevocations{}
	revoked.RevokeSerial(13)
	revoked.RevokeKey(ssh.FingerprintSHA256(revokedCA.PublicKey()))
	trust := &SSHTrust{
		Keys: map[string]SSHKey{
			string(ed.PublicKey().Marshal()):      {Name: "alice"},
			string(rs.PublicKey().Marshal()):      {Name: "rsa-key", From: []string{"198.18.0.0/24", "!198.18.0.66"}},
			string(ec.PublicKey().Marshal()):      {Name: "ecdsa-key", VerifyRequired: true},
			string(expired.PublicKey().Marshal()): {Name: "old", Expires: f.now.Add(-time.Minute)},
		},
		CAs: map[string]SSHCA{string(ca.PublicKey().Marshal()): {},
			string(opsCA.PublicKey().Marshal()):     {Principals: []string{"ops"}},
			string(revokedCA.PublicKey().Marshal()): {}},
		Principals: []string{"ops", "db"},
		Revoked:    revoked,
	}
	f.v.cfg.SSH = trust
	now := f.now
	grant := netip.Addr{} // the address a knock asks for: the source unless set
	seal := func(s ssh.Signer) []byte {
		t.Helper()
		k := f.knock()
		if grant.IsValid() {
			k.Allow = grant
		}
		k.Time = f.now
		pkt, err := SealSSH(s, f.server.Public(), k)
		if err != nil {
			t.Fatal(err)
		}
		if len(pkt) != PacketSizeSSH || len(pkt) > 1200 {
			t.Fatalf("SSH knock of %d bytes", len(pkt))
		}
		return pkt
	}
	next := func() { f.now = f.now.Add(time.Second) }
	user := sshSigner(t, false)
	cases := []struct {
		name   string
		signer ssh.Signer
		src    string
		want   Reason
		ident  string
		grant  string // the address asked for, if not src
	}{
		{"ed25519 key", ed, "198.18.0.2", Accepted, "ssh:alice", ""},
		{"rsa key, rsa-sha2-256", rs, "198.18.0.2", Accepted, "ssh:rsa-key", ""},
		{"bad verify-required without a security key", ec, "198.18.0.2", SSHNotVerified, "", ""},
		{"bad expiry-time passed", expired, "198.18.0.2", SSHExpired, "", ""},
		{"bad from= excludes the source", rs, "198.18.1.2", SSHSourceNotAllowed, "", ""},
		// The holder of a from= key spoofs an allowed source: the address
		// the knock grants must be allowed too.
		{"bad from= excludes the granted address", rs, "198.18.0.2", SSHSourceNotAllowed, "", "203.0.113.9"},
		{"principals= of the CA line", certSigner(t, opsCA, user, []string{"ops"}, 20, now.Add(-time.Hour), now.Add(time.Hour), nil), "198.18.0.2", Accepted, "principal:ops", ""},
		{"bad principal outside the CA line's principals=", certSigner(t, opsCA, user, []string{"db"}, 21, now.Add(-time.Hour), now.Add(time.Hour), nil), "198.18.0.2", SSHPrincipalNotAllowed, "", ""},
		{"bad CA key revoked", certSigner(t, revokedCA, user, []string{"ops"}, 22, now.Add(-time.Hour), now.Add(time.Hour), nil), "198.18.0.2", SSHRevoked, "", ""},
		{"bad from= negated address", rs, "198.18.0.66", SSHSourceNotAllowed, "", ""},
		{"bad key not listed", stranger, "198.18.0.2", UnknownClient, "", ""},
		{"certificate", certSigner(t, ca, user, []string{"db", "x"}, 1, now.Add(-time.Hour), now.Add(time.Hour), nil), "198.18.0.2", Accepted, "principal:db", ""},
		{"bad certificate expired", certSigner(t, ca, user, []string{"ops"}, 2, now.Add(-2*time.Hour), now.Add(-time.Hour), nil), "198.18.0.2", SSHCertInvalid, "", ""},
		{"bad certificate for another principal", certSigner(t, ca, user, []string{"web"}, 3, now.Add(-time.Hour), now.Add(time.Hour), nil), "198.18.0.2", SSHPrincipalNotAllowed, "", ""},
		{"bad certificate source-address", certSigner(t, ca, user, []string{"ops"}, 4, now.Add(-time.Hour), now.Add(time.Hour),
			map[string]string{"source-address": "203.0.113.0/24"}), "198.18.0.2", SSHSourceNotAllowed, "", ""},
		{"certificate source-address matches", certSigner(t, ca, sshSigner(t, false), []string{"ops"}, 5, now.Add(-time.Hour), now.Add(time.Hour),
			map[string]string{"source-address": "198.18.0.0/24"}), "198.18.0.2", Accepted, "principal:ops", ""},
		{"bad certificate revoked", certSigner(t, ca, user, []string{"ops"}, 13, now.Add(-time.Hour), now.Add(time.Hour), nil), "198.18.0.2", SSHRevoked, "", ""},
		{"bad certificate from an untrusted CA", certSigner(t, stranger, user, []string{"ops"}, 6, now.Add(-time.Hour), now.Add(time.Hour), nil), "198.18.0.2", UnknownClient, "", ""},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			next()
			f.src = netip.MustParseAddr(tt.src)
			grant = netip.Addr{}
			if tt.grant != "" {
				grant = netip.MustParseAddr(tt.grant)
			}
			k, r := f.verify(seal(tt.signer))
			if r != tt.want {
				t.Fatalf("%v, want %v", r, tt.want)
			}
			if r == Accepted && f.v.ClientName(&k) != tt.ident {
				t.Fatalf("identity %q, want %q", f.v.ClientName(&k), tt.ident)
			}
		})
	}

	t.Run("replay", func(t *testing.T) {
		next()
		f.src = netip.MustParseAddr("198.18.0.2")
		pkt := seal(ed)
		if _, r := f.verify(pkt); r != Accepted {
			t.Fatal(r)
		}
		if _, r := f.verify(pkt); r != Replayed {
			t.Fatalf("resent: %v", r)
		}
	})
	t.Run("bad signature: a listed key's blob, signed by another key", func(t *testing.T) {
		next()
		if _, r := f.verify(seal(impostor{ed.PublicKey(), stranger})); r != BadSignature {
			t.Fatalf("%v, want bad signature", r)
		}
	})
	t.Run("refused without [ssh]", func(t *testing.T) {
		next()
		f.v.cfg.SSH = nil
		if _, r := f.verify(seal(ed)); r != UnknownClient {
			t.Fatalf("%v", r)
		}
		f.v.cfg.SSH = trust
	})
	t.Run("suite 2 server refused by the client", func(t *testing.T) {
		xw, _ := GenerateXWingServerKey()
		if _, err := SealSSH(ed, xw.Public(), f.knock()); err == nil {
			t.Fatal("sealed an SSH knock for a suite-2 server")
		}
	})
}

func TestMatchFrom(t *testing.T) {
	a := netip.MustParseAddr("198.18.0.7")
	for _, tt := range []struct {
		pats []string
		want bool
	}{
		{[]string{"198.18.0.7"}, true}, {[]string{"198.18.0.0/24"}, true}, {[]string{"198.18.0.*"}, true},
		{[]string{"198.18.0.0/24", "!198.18.0.7"}, false}, {[]string{"10.0.0.0/8"}, false},
		{[]string{"host.example.org"}, false}, {[]string{"*"}, true},
	} {
		if got := MatchFrom(tt.pats, a); got != tt.want {
			t.Errorf("%v: %v", tt.pats, got)
		}
	}
}

// impostor claims one public key and signs with another signer's key.
type impostor struct {
	pub ssh.PublicKey
	ssh.Signer
}

func (i impostor) PublicKey() ssh.PublicKey { return i.pub }

// FuzzSSHPart feeds arbitrary bytes as the SSH part of a decrypted knock:
// refused without a panic, never accepted.
func FuzzSSHPart(f *testing.F) {
	fx := newFixture(f, "")
	ed := sshSigner(f, false)
	fx.v.cfg.SSH = &SSHTrust{Keys: map[string]SSHKey{string(ed.PublicKey().Marshal()): {Name: "a"}}, CAs: map[string]SSHCA{}}
	blob := ed.PublicKey().Marshal()
	seed := make([]byte, plaintextSSHSize-ptSSH)
	seed[0], seed[1] = 0, byte(len(blob))
	copy(seed[2:], blob)
	f.Add(seed)
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, tail []byte) {
		pt := make([]byte, plaintextSSHSize)
		copy(pt[ptSSH:], tail)
		var k Knock
		if r := fx.v.verifySSH(netip.MustParseAddr("198.18.0.2"), make([]byte, 36), pt, fx.now, &k); r == Accepted {
			t.Fatal("accepted an SSH part that nobody signed")
		}
	})
}
