package spa

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/postern/postern/port"
)

var update = flag.Bool("update", false, "rewrite ../testdata/spa-v1.json from fresh keys")

const vectorFile = "../testdata/spa-v1.json"

// vector is one entry of testdata/spa-v1.json: keys, a packet, the time and
// addresses it is checked at, and what the check must give.
type vector struct {
	Comment      string `json:"comment"`
	ServerKey    string `json:"server_private_key"`
	ServerPublic string `json:"server_public_key"`
	ClientKey    string `json:"client_private_key"`
	ClientPublic string `json:"client_public_key"`
	// SSHAuthorizedKey, for a knock signed by an OpenSSH key: the
	// authorized_keys line the server trusts (name "vector").
	SSHAuthorizedKey string `json:"ssh_authorized_key,omitempty"`
	// SSHEd25519Seed: that key's private half (the 32-byte Ed25519 seed,
	// base64), so that the SSH vector reproduces too (ssh-ed25519
	// signatures are deterministic).
	SSHEd25519Seed string `json:"ssh_ed25519_seed,omitempty"`
	Packet         string `json:"packet_hex"`
	// EphemeralPrivate, for suite-1 native knocks: the HPKE ephemeral
	// X25519 private key (base64) the packet was sealed with, so that a
	// sender reproduces packet_hex byte for byte from the fields below
	// (the padding is all zero; Ed25519 signatures are deterministic).
	EphemeralPrivate string `json:"ephemeral_private,omitempty"`
	// MLKEMRandomness, for suite 2: the 32 bytes of ML-KEM-768
	// encapsulation randomness (FIPS 203 Encaps_internal's m, base64).
	MLKEMRandomness string `json:"mlkem_randomness,omitempty"`
	// FlipByte: after sealing, the lowest bit of this byte was flipped (a
	// negative vector made from a good packet).
	FlipByte *int `json:"flip_byte,omitempty"`
	// TokenKey: the pre-authentication key (postern token) the packet
	// carries a token and mac2 for.
	TokenKey string `json:"token_key,omitempty"`
	Now      int64  `json:"now_unix_ns"`
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	Want     string `json:"want_reason"`
	// Decoded fields, for accepted packets.
	Time      int64    `json:"time_unix_ns,omitempty"`
	UseSource bool     `json:"use_source,omitempty"`
	Allow     string   `json:"allow,omitempty"`
	Dest      string   `json:"dest,omitempty"`
	Ports     []string `json:"ports,omitempty"`
	Duration  int      `json:"duration_s,omitempty"`
	Action    string   `json:"action,omitempty"`
	To        string   `json:"to,omitempty"` // a forwarded destination
}

func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	b, err := os.ReadFile(vectorFile)
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 3 {
		t.Fatalf("only %d vectors", len(vs))
	}
	for _, v := range vs {
		t.Run(v.Comment, func(t *testing.T) {
			server, err := ParseServerPrivateKey(v.ServerKey)
			if err != nil || server.Public().String() != v.ServerPublic {
				t.Fatalf("server key: %v", err)
			}
			client, err := ParseClientPublicKey(v.ClientPublic)
			if err != nil {
				t.Fatal(err)
			}
			ts, _ := LoadTimestamps("")
			cfg := VerifierConfig{Key: server, Clients: map[ClientPublicKey]string{client: "vector"},
				MaxSkew: 30 * time.Second, Replay: ts}
			if v.SSHAuthorizedKey != "" {
				pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(v.SSHAuthorizedKey))
				if err != nil {
					t.Fatal(err)
				}
				cfg.SSH = &SSHTrust{Keys: map[string]SSHKey{string(pub.Marshal()): {Name: "vector"}}}
			}
			ver, err := NewVerifier(cfg)
			if err != nil {
				t.Fatal(err)
			}
			pkt, err := hex.DecodeString(v.Packet)
			if err != nil {
				t.Fatal(err)
			}
			if v.EphemeralPrivate != "" {
				reproduce(t, v, server, pkt)
			}
			var k Knock
			r := ver.Verify(netip.MustParseAddr(v.Src), netip.MustParseAddr(v.Dst), pkt, time.Unix(0, v.Now), &k)
			if r.String() != v.Want {
				t.Fatalf("Verify = %q, want %q", r, v.Want)
			}
			if r != Accepted {
				return
			}
			var allow, dest, to string
			if k.Allow.IsValid() {
				allow = k.Allow.String()
			}
			if k.To.IsValid() {
				to = k.To.String()
			}
			if k.Dest.IsValid() {
				dest = k.Dest.String()
			}
			if v.SSHAuthorizedKey != "" {
				if ver.ClientName(&k) != "ssh:vector" {
					t.Fatalf("SSH identity %q", ver.ClientName(&k))
				}
				k.Client = client // the SSH vector's replay key is not a client key
			}
			if k.Client != client || k.Time.UnixNano() != v.Time || k.UseSource != v.UseSource ||
				allow != v.Allow || dest != v.Dest || port.Join(k.Ports) != port.Join(mustPorts(t, v.Ports)) ||
				k.Duration != time.Duration(v.Duration)*time.Second || k.Action != v.Action || to != v.To {
				t.Fatalf("decoded %+v, vector says %+v", k, v)
			}
		})
	}
}

func mustPorts(t *testing.T, ss []string) []port.Spec {
	var out []port.Spec
	for _, s := range ss {
		p, err := port.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func writeVectors(t *testing.T) {
	server, _ := GenerateServerKey()
	client, _ := GenerateClientKey()
	now := time.Unix(1_795_000_000, 123_456_789)
	base := vector{
		ServerKey: server.Encode(), ServerPublic: server.Public().String(),
		ClientKey: client.Encode(), ClientPublic: client.Public().String(),
		Now: now.UnixNano(), Src: "198.18.0.2", Dst: "198.18.0.1",
	}
	var vs []vector
	// add seals k; flip >= 0 then flips the lowest bit of that byte.
	add := func(comment string, k Knock, want Reason, flip int) {
		eph, _ := ecdh.X25519().GenerateKey(rand.Reader)
		pkt, err := seal(client, server.Public(), k, encapWith(eph))
		if err != nil {
			t.Fatal(err)
		}
		v := base
		v.EphemeralPrivate = base64.StdEncoding.EncodeToString(eph.Bytes())
		if flip >= 0 {
			pkt[flip] ^= 1
			v.FlipByte = &flip
		}
		if k.TokenKey != nil {
			v.TokenKey = base64.StdEncoding.EncodeToString(k.TokenKey)
		}
		v.Comment, v.Packet, v.Want = comment, hex.EncodeToString(pkt), want.String()
		// Every field, so that the packet can be made again.
		v.Time, v.UseSource, v.Duration, v.Action = k.Time.UnixNano(), k.UseSource, int(k.Duration/time.Second), k.Action
		if k.Allow.IsValid() {
			v.Allow = k.Allow.String()
		}
		if k.Dest.IsValid() {
			v.Dest = k.Dest.String()
		}
		if k.To.IsValid() {
			v.To = k.To.String()
		}
		for _, p := range k.Ports {
			v.Ports = append(v.Ports, p.String())
		}
		vs = append(vs, v)
	}
	tcp22 := []port.Spec{{Proto: port.TCP, Num: 22}}
	add("tcp/22 for 198.18.0.2, 30 s", Knock{Time: now, Allow: netip.MustParseAddr("198.18.0.2"), Ports: tcp22, Duration: 30 * time.Second}, Accepted, -1)
	add("use source, bound to 198.18.0.1, two ports, action, server default duration",
		Knock{Time: now.Add(-time.Second), UseSource: true, Dest: netip.MustParseAddr("198.18.0.1"),
			Ports: []port.Spec{{Proto: port.TCP, Num: 443}, {Proto: port.UDP, Num: 51820}}, Action: "wake-nas"}, Accepted, -1)
	add("IPv6 allow", Knock{Time: now.Add(time.Second), Allow: netip.MustParseAddr("2001:db8::2"), Ports: tcp22, Duration: 300 * time.Second}, Accepted, -1)
	add("stale: 2 minutes old", Knock{Time: now.Add(-2 * time.Minute), Allow: netip.MustParseAddr("198.18.0.2"), Ports: tcp22}, StaleTimestamp, -1)
	add("future: 2 minutes ahead", Knock{Time: now.Add(2 * time.Minute), Allow: netip.MustParseAddr("198.18.0.2"), Ports: tcp22}, FutureTimestamp, -1)
	add("bound to another server address", Knock{Time: now.Add(3 * time.Second), Allow: netip.MustParseAddr("198.18.0.2"),
		Dest: netip.MustParseAddr("198.18.0.9"), Ports: tcp22}, WrongDestination, -1)
	add("pre-authenticated (token and mac2): tcp/22 for 198.18.0.2, 30 s", Knock{Time: now.Add(4 * time.Second),
		Allow: netip.MustParseAddr("198.18.0.2"), Ports: tcp22, Duration: 30 * time.Second, TokenKey: TokenKey(server, client.Public())}, Accepted, -1)
	add("forwarded destination: tcp/22 of 10.0.0.5 behind the server, for 198.18.0.2", Knock{Time: now.Add(5 * time.Second),
		Allow: netip.MustParseAddr("198.18.0.2"), To: netip.MustParseAddr("10.0.0.5"), Ports: tcp22, Duration: 60 * time.Second}, Accepted, -1)
	add("close request: tcp/22 for 198.18.0.2", Knock{Time: now.Add(6 * time.Second), Allow: netip.MustParseAddr("198.18.0.2"),
		Ports: tcp22, Action: "close"}, Accepted, -1)
	// Suite 2: same client, a post-quantum hybrid server key.
	xw, _ := GenerateXWingServerKey()
	xeph, _ := ecdh.X25519().GenerateKey(rand.Reader)
	m := make([]byte, 32)
	rand.Read(m)
	xpkt, err := seal(client, xw.Public(), Knock{Time: now, Allow: netip.MustParseAddr("198.18.0.2"), Ports: tcp22, Duration: 30 * time.Second},
		encapXWingWith(xeph, m))
	if err != nil {
		t.Fatal(err)
	}
	xv := base
	xv.EphemeralPrivate = base64.StdEncoding.EncodeToString(xeph.Bytes())
	xv.MLKEMRandomness = base64.StdEncoding.EncodeToString(m)
	xv.Comment, xv.ServerKey, xv.ServerPublic, xv.Packet, xv.Want = "suite 2 (X-Wing): tcp/22 for 198.18.0.2, 30 s",
		xw.Encode(), xw.Public().String(), hex.EncodeToString(xpkt), Accepted.String()
	xv.Time, xv.Allow, xv.Ports, xv.Duration = now.UnixNano(), "198.18.0.2", []string{"tcp/22"}, 30
	vs = append(vs, xv)
	add("mac1 flipped", Knock{Time: now, Allow: netip.MustParseAddr("198.18.0.2"), Ports: tcp22}, BadMAC1, PacketSize-1)
	// Signed by an OpenSSH ed25519 key (§9).
	_, sshKey, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(sshKey)
	if err != nil {
		t.Fatal(err)
	}
	seph, _ := ecdh.X25519().GenerateKey(rand.Reader)
	spkt, err := sealSSH(signer, server.Public(), Knock{Time: now.Add(2 * time.Second), Allow: netip.MustParseAddr("198.18.0.2"),
		Ports: tcp22, Duration: 30 * time.Second}, encapWith(seph))
	if err != nil {
		t.Fatal(err)
	}
	sv := base
	sv.EphemeralPrivate = base64.StdEncoding.EncodeToString(seph.Bytes())
	sv.SSHEd25519Seed = base64.StdEncoding.EncodeToString(sshKey.Seed())
	sv.Comment, sv.Packet, sv.Want = "signed by an OpenSSH ed25519 key: tcp/22 for 198.18.0.2, 30 s", hex.EncodeToString(spkt), Accepted.String()
	sv.SSHAuthorizedKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	sv.Time, sv.Allow, sv.Ports, sv.Duration = now.Add(2*time.Second).UnixNano(), "198.18.0.2", []string{"tcp/22"}, 30
	vs = append(vs, sv)
	b, err := json.MarshalIndent(vs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vectorFile, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// reproduce seals the vector's knock again with its ephemeral key and
// requires the same bytes: the vector pins every byte, not only the
// outcome.
func reproduce(t *testing.T, v vector, server ServerPrivateKey, pkt []byte) {
	t.Helper()
	client, err := ParseClientPrivateKey(v.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(v.EphemeralPrivate)
	if err != nil {
		t.Fatal(err)
	}
	eph, err := ecdh.X25519().NewPrivateKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	k := Knock{Time: time.Unix(0, v.Time), UseSource: v.UseSource, Ports: mustPorts(t, v.Ports),
		Duration: time.Duration(v.Duration) * time.Second, Action: v.Action}
	for _, a := range []struct {
		s   string
		dst *netip.Addr
	}{{v.Allow, &k.Allow}, {v.Dest, &k.Dest}, {v.To, &k.To}} {
		if a.s != "" {
			*a.dst = netip.MustParseAddr(a.s)
		}
	}
	if v.TokenKey != "" {
		if k.TokenKey, err = base64.StdEncoding.DecodeString(v.TokenKey); err != nil {
			t.Fatal(err)
		}
	}
	var again []byte
	if v.SSHEd25519Seed != "" {
		seed, err := base64.StdEncoding.DecodeString(v.SSHEd25519Seed)
		if err != nil || len(seed) != ed25519.SeedSize {
			t.Fatalf("ssh_ed25519_seed: %v", err)
		}
		signer, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(seed))
		if err != nil {
			t.Fatal(err)
		}
		again, err = sealSSH(signer, server.Public(), k, encapWith(eph))
		if err != nil {
			t.Fatal(err)
		}
	} else {
		encap := encapWith(eph)
		if v.MLKEMRandomness != "" {
			m, err := base64.StdEncoding.DecodeString(v.MLKEMRandomness)
			if err != nil {
				t.Fatal(err)
			}
			encap = encapXWingWith(eph, m)
		}
		if again, err = seal(client, server.Public(), k, encap); err != nil {
			t.Fatal(err)
		}
	}
	if v.FlipByte != nil {
		again[*v.FlipByte] ^= 1
	}
	if !bytes.Equal(again, pkt) {
		t.Fatalf("sealed again with ephemeral_private, the packet differs:\n got %x\nwant %x", again, pkt)
	}
}
