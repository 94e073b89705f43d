package fko

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
)

// The worked example of ../shared/reference/fwknop.md §1.10: a packet made
// by the real fwknop 2.6.10 client.
var (
	vectorKey     = "abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4="
	vectorHMACKey = "EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig=="
	vectorWire    = "/fT3eh4kUeUA8DfSDFr+owi3OyWUpJgWLovWC2+jz4r2xcvnbo7cHpaJlGiQ8ZoDUmqlw8RT0OjTe3uWwjN+hTR15ax0POKtEe5ZdPmCnEAWYQ2D1pnEykdV3fCdJ0zRUa+ph8BMjqupFA9xOOaYTdbXByXBH6I+MlsWXX/Jmm7xSPgHI7n6l9hiwNVPyrfzEkIzbSMbr6Sc"
)

func mustB64(t testing.TB, s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func vectorKeys(t testing.TB) *Keys {
	return &Keys{Key: mustB64(t, vectorKey), HMACKey: mustB64(t, vectorHMACKey), HMACType: SHA256}
}

func TestReferenceVector(t *testing.T) {
	if err := Preprocess([]byte(vectorWire)); err != nil {
		t.Fatal(err)
	}
	m, _, err := vectorKeys(t).Open(vectorWire)
	if err != nil {
		t.Fatal(err)
	}
	want := Message{Rand: "2054632734893569", User: "root", Timestamp: 1795241044, Version: "3.0.0",
		Type: AccessMsg, Message: "10.9.9.2,tcp/22", Digest: SHA256}
	if *m != want {
		t.Fatalf("decoded %+v, want %+v", *m, want)
	}
	a, err := ParseAccessMessage(m.Message)
	if err != nil || a.Allow.String() != "10.9.9.2" || len(a.Ports) != 1 || a.Ports[0].String() != "tcp/22" {
		t.Fatalf("access %+v %v", a, err)
	}
	// The plaintext of the reference, step [6], re-encodes identically.
	pt, err := m.Encode()
	if err != nil || pt != "2054632734893569:cm9vdA:1795241044:3.0.0:1:MTAuOS45LjIsdGNwLzIy:nr3jgQ8DJmMorJiP+awedeAioonl+qsbKFbrtq696ug" {
		t.Fatalf("re-encoded %q %v", pt, err)
	}
}

func TestKeyDerivation(t *testing.T) {
	// Reference step [5]: salt df4f77a1e2451e50.
	key, iv := bytesToKey(mustB64(t, vectorKey), []byte{0xdf, 0x4f, 0x77, 0xa1, 0xe2, 0x45, 0x1e, 0x50})
	if fmt.Sprintf("%x", key) != "24df2bfc38f5608b45ee56aa246b8869597b6239f7108b3f9ab797a1f323d832" ||
		fmt.Sprintf("%x", iv) != "2728f27697200517d32fc9c80a3ad2bf" {
		t.Fatalf("key %x iv %x", key, iv)
	}
}

func TestTamperingRefused(t *testing.T) {
	k := vectorKeys(t)
	flip := func(i int, c byte) string { b := []byte(vectorWire); b[i] = c; return string(b) }
	last := len(vectorWire) - 1
	lastChar := vectorWire[last]
	// The two low bits of the last character of a 43-character SHA-256 tag
	// are padding bits: a decoder that compares decoded bytes would accept
	// the flip; fwknop compares the text, and so must postern.
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	idx := strings.IndexByte(alphabet, lastChar)
	for _, tc := range []struct {
		name string
		wire string
	}{
		{"bad one body character", flip(20, vectorWire[20]^1)},
		{"bad one tag character", flip(last-5, 'A'+(vectorWire[last-5]-'A'+1)%26)},
		{"bad low bits of the last character", flip(last, alphabet[idx^3])},
		{"bad truncated", vectorWire[:len(vectorWire)-1]},
	} {
		if _, _, err := k.Open(tc.wire); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	wrong := vectorKeys(t)
	wrong.HMACKey[0] ^= 1
	if _, _, err := wrong.Open(vectorWire); err != ErrHMAC {
		t.Fatalf("wrong HMAC key: %v", err)
	}
	noHMAC := vectorKeys(t)
	noHMAC.HMACKey = nil
	if _, _, err := noHMAC.Open(vectorWire); err == nil {
		t.Fatal("tag treated as ciphertext was accepted")
	}
}

func TestRoundTripAllDigests(t *testing.T) {
	for _, hm := range []DigestType{MD5, SHA1, SHA256, SHA384, SHA512, SHA3_256, SHA3_512} {
		for _, inner := range []DigestType{MD5, SHA1, SHA256, SHA384, SHA512, SHA3_256, SHA3_512} {
			k := &Keys{Key: []byte("a passphrase"), HMACKey: []byte("an hmac key"), HMACType: hm}
			m := &Message{Rand: "1234567890123456", User: "gouser", Timestamp: 1795241044, Type: ClientTimeoutAccessMsg,
				Message: "10.9.9.2,tcp/22,udp/53", ClientTimeout: 60, Digest: inner}
			pt, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			wire, err := k.Seal(pt)
			if err != nil {
				t.Fatalf("hmac %v inner %v: %v", hm, inner, err)
			}
			got, _, err := k.Open(wire)
			if err != nil || got.Digest != inner || got.ClientTimeout != 60 || got.Message != m.Message {
				t.Fatalf("hmac %v inner %v: %+v %v", hm, inner, got, err)
			}
		}
	}
}

func TestLegacyMode(t *testing.T) {
	short := &Keys{Key: []byte("short"), Mode: LegacyCBC}
	padded := &Keys{Key: []byte("short00000000000"), Mode: CBC}
	m := &Message{Rand: "1234567890123456", User: "u", Timestamp: 1, Type: AccessMsg, Message: "10.9.9.2,tcp/22"}
	pt, _ := m.Encode()
	wire, err := short.Seal(pt)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := padded.Open(wire); err != nil {
		t.Fatalf("legacy key is not the '0'-padded key: %v", err)
	}
}

func TestMessageTypes(t *testing.T) {
	for _, m := range []Message{
		{Type: CommandMsg, Message: "10.9.9.2,uname -a"},
		{Type: AccessMsg, Message: "0.0.0.0,tcp/22", ServerAuth: "x"},
		{Type: NATAccessMsg, Message: "10.9.9.2,tcp/22", NAT: "192.168.1.10,22"},
		{Type: ClientTimeoutAccessMsg, Message: "10.9.9.2,tcp/22", ClientTimeout: 600},
		{Type: ClientTimeoutNATAccessMsg, Message: "10.9.9.2,tcp/22", NAT: "192.168.1.10,22", ClientTimeout: 10},
		{Type: LocalNATAccessMsg, Message: "10.9.9.2,tcp/55000", NAT: "127.0.0.1,22"},
		{Type: ClientTimeoutLocalNATAccessMsg, Message: "10.9.9.2,tcp/55000", NAT: "127.0.0.1,22", ClientTimeout: 60, ServerAuth: "pw"},
	} {
		m.Rand, m.User, m.Timestamp = "1234567890123456", "root", 1795241076
		pt, err := m.Encode()
		if err != nil {
			t.Fatalf("%d: %v", m.Type, err)
		}
		got, err := Decode(pt)
		if err != nil {
			t.Fatalf("%d: decode %q: %v", m.Type, pt, err)
		}
		m.Version, m.Digest = Version, SHA256
		if *got != m {
			t.Fatalf("type %d: %+v, want %+v", m.Type, *got, m)
		}
	}
	// The reference's observed encodings decode (digest recomputed here).
	for _, enc := range []string{
		"1163602086582479:cm9vdA:1795241076:3.0.0:3:MC4wLjAuMCx0Y3AvMjIsdWRwLzUz:600",
		"1255847821189114:cm9vdA:1795241076:3.0.0:2:MTAuOS45LjIsdGNwLzIy:MTkyLjE2OC4xLjEwLDIy",
		"3486815921813802:cm9vdA:1795241076:3.0.0:6:MTAuOS45LjIsdGNwLzU1MDAw:MTI3LjAuMC4xLDIy:60",
		"1002559121636539:cm9vdA:1795241076:3.0.0:0:MTAuOS45LjIsdW5hbWUgLWE",
	} {
		if _, err := Decode(enc + ":" + sum(SHA256, enc)); err != nil {
			t.Errorf("%s: %v", enc, err)
		}
	}
}

// fwknopd treats packets of 400+ characters as GnuPG: Seal must never
// produce a Rijndael packet that long, and must say so instead.
func TestFourHundredBoundary(t *testing.T) {
	k := &Keys{Key: []byte("k"), HMACKey: []byte("h")}
	sealed, refused := 0, 0
	for n := 1; n <= 20; n++ {
		var ps []string
		for i := range n {
			ps = append(ps, fmt.Sprintf("tcp/%d", 10000+i))
		}
		m := &Message{Rand: "1234567890123456", User: "root", Timestamp: 1795241044, Type: AccessMsg,
			Message: "10.9.9.2," + strings.Join(ps, ",")}
		pt, _ := m.Encode()
		wire, err := k.Seal(pt)
		switch {
		case err == nil && len(wire) >= GPGMinWire:
			t.Fatalf("%d ports: sealed %d characters", n, len(wire))
		case err == nil:
			sealed++
		case strings.Contains(err.Error(), "400 or more"):
			refused++
		default:
			t.Fatal(err)
		}
	}
	if sealed == 0 || refused == 0 {
		t.Fatalf("sealed %d, refused %d: the boundary was not crossed", sealed, refused)
	}
}

func TestPreprocess(t *testing.T) {
	for name, w := range map[string]string{
		"bad short":      strings.Repeat("A", 139),
		"bad long":       strings.Repeat("A", 1501),
		"bad prefixed":   rijndaelB64 + vectorWire,
		"bad gpg prefix": "hQ" + strings.Repeat("A", 500),
		"bad not base64": vectorWire[:150] + "=" + vectorWire[151:],
	} {
		if Preprocess([]byte(w)) == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzOpen(f *testing.F) {
	f.Add(vectorWire)
	f.Add(vectorWire[:200])
	f.Add(strings.Repeat("A", 204))
	k := vectorKeys(f)
	f.Fuzz(func(t *testing.T, wire string) {
		if Preprocess([]byte(wire)) != nil {
			return
		}
		m, _, err := k.Open(wire)
		if err == nil && wire != vectorWire {
			t.Fatalf("accepted a packet fwknop did not make: %q → %+v", wire, m)
		}
	})
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{"2054632734893569:cm9vdA:1795241044:3.0.0:1:MTAuOS45LjIsdGNwLzIy:nr3jgQ8DJmMorJiP+awedeAioonl+qsbKFbrtq696ug",
		"1:2:3:4:5:6:7", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, pt string) {
		m, err := Decode(pt)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to a plaintext that decodes the same.
		again, err := m.Encode()
		if err != nil {
			return // the decoder is more lenient than the encoder (e.g. usernames)
		}
		m2, err := Decode(again)
		if err != nil || *m2 != *m {
			t.Fatalf("%q → %+v → %q → %+v %v", pt, m, again, m2, err)
		}
	})
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// stanzaKeys returns n stanzas' keys; the last one has the vector's keys.
func stanzaKeys(b *testing.B, n int) []*Keys {
	ks := make([]*Keys, n)
	for i := range ks[:n-1] {
		ks[i] = &Keys{Key: []byte(fmt.Sprintf("key %d", i)), HMACKey: []byte(fmt.Sprintf("hmac key %d", i))}
	}
	ks[n-1] = vectorKeys(b)
	return ks
}

// BenchmarkVerify: a valid packet whose stanza is the last one tried, as
// fwknopd (and postern) try stanzas in file order.
func BenchmarkVerify(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("stanzas=%d", n), func(b *testing.B) {
			ks := stanzaKeys(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if err := Preprocess([]byte(vectorWire)); err != nil {
					b.Fatal(err)
				}
				var err error
				for _, k := range ks {
					if _, _, err = k.Open(vectorWire); err == nil {
						break
					}
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRejectJunk: 200 characters of base64 that match no stanza: every
// stanza's HMAC is computed once, nothing is decrypted.
func BenchmarkRejectJunk(b *testing.B) {
	junk := strings.Repeat("abcdEFGH0123+/xy", 13)[:200]
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("stanzas=%d", n), func(b *testing.B) {
			ks := stanzaKeys(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if err := Preprocess([]byte(junk)); err != nil {
					b.Fatal(err)
				}
				for _, k := range ks {
					if _, _, err := k.Open(junk); err == nil {
						b.Fatal("junk accepted")
					}
				}
			}
		})
	}
}

func TestDigestSizes(t *testing.T) {
	for d, n := range digestSizes {
		if d.new().Size() != n {
			t.Errorf("%v: size %d, table says %d", d, d.new().Size(), n)
		}
	}
}

// A username with a newline or a terminal escape is refused on the way
// in, as fwknopd's validate_username() does: it would forge log lines.
func TestDecodeRefusesBadUsername(t *testing.T) {
	for _, user := range []string{"a\nb", "x\x1b[31m", "a;b", "NO USER"} {
		enc := "1234567890123456:" + b64.EncodeToString([]byte(user)) + ":1800000000:3.0.0:1:" +
			b64.EncodeToString([]byte("198.18.0.2,tcp/22"))
		if _, err := Decode(enc + ":" + sum(SHA256, enc)); err == nil {
			t.Errorf("username %q accepted", user)
		}
	}
	enc := "1234567890123456:" + b64.EncodeToString([]byte("alice")) + ":1800000000:3.0.0:1:" +
		b64.EncodeToString([]byte("198.18.0.2,tcp/22"))
	if _, err := Decode(enc + ":" + sum(SHA256, enc)); err != nil {
		t.Fatalf("a good username refused: %v", err)
	}
}

// Without an HMAC key (a legacy stanza) the inner digest is the only
// integrity check: a message whose digest is off by one character is
// refused by Decode, by Open, and by the decoder with a counted reason.
func TestLegacyDigestIsChecked(t *testing.T) {
	k := &Keys{Key: []byte("secret-key-1")}
	m := &Message{Rand: "1234567890123456", User: "alice", Timestamp: 1_800_000_000, Type: AccessMsg,
		Message: "198.18.0.2,tcp/22"}
	pt, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	i := strings.LastIndexByte(pt, ':') + 3 // a character inside the digest
	bad := pt[:i] + string(alphabet[(strings.IndexByte(alphabet, pt[i])+1)%64]) + pt[i+1:]
	if _, err := Decode(pt); err != nil {
		t.Fatalf("the good message: %v", err)
	}
	if _, err := Decode(bad); err == nil {
		t.Fatal("Decode accepted a wrong digest")
	}
	for name, text := range map[string]string{"good": pt, "bad digest": bad} {
		wire, err := k.Seal(text)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = k.Open(wire)
		if (err == nil) != (name == "good") {
			t.Errorf("Open of the %s message: %v", name, err)
		}
		ss, err := ParseAccessConf("a.conf", []byte("SOURCE ANY\nKEY secret-key-1\nOPEN_PORTS tcp/22\n"))
		if err != nil {
			t.Fatal(err)
		}
		d := NewDecoder(DecoderConfig{Stanzas: ss, MaxAge: 1000 * time.Hour, Replay: testReplayCache(t)})
		var got policy.Verdict
		d.Decode(&capture.Frame{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.18.0.1"),
			Payload: []byte(wire), Time: time.Unix(1_800_000_000, 0)}, func(v *policy.Verdict) { got = *v })
		d.Close()
		if name == "good" && got.Reason != "" || name != "good" && got.Reason == "" {
			t.Errorf("decoder, %s message: reason %q", name, got.Reason)
		}
		if name != "good" && !slices.Contains(Reasons, got.Reason) {
			t.Errorf("decoder refused with %q, not a counted reason", got.Reason)
		}
	}
}
