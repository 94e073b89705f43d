package spa

import (
	"crypto/hpke"
	"encoding/base64"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// docs/PROTOCOL.md is what other implementations are written from: every
// byte count, offset and id it states is checked here against the
// constants the code uses, so the document cannot drift from the wire.
func TestProtocolDocumentMatchesTheCode(t *testing.T) {
	data, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	section := func(from, to string) string {
		t.Helper()
		_, s, ok := strings.Cut(doc, from)
		if !ok {
			t.Fatalf("PROTOCOL.md has no %q", from)
		}
		s, _, _ = strings.Cut(s, to)
		return s
	}
	s1, _ := layoutFor(SuiteX25519)
	s2, _ := layoutFor(SuiteXWing)
	ssh := layoutSSH()
	xwing := hpke.MLKEM768X25519()
	kemPub := 1184 + 32
	tagged := base64.StdEncoding.EncodedLen(1 + kemPub)
	for _, want := range []string{
		fmt.Sprintf("**%d bytes** with suite 1", PacketSize),
		fmt.Sprintf("**%d bytes** with the opt-in", PacketSizeXWing),
		fmt.Sprintf("(**%d** /\n**%d**)", PacketSize+preauthSize, PacketSizeXWing+preauthSize),
		fmt.Sprintf("**%d**. The", PacketSizeSSH),
		fmt.Sprintf("%d for suite 1, %d for suite 2,\n  %d for an SSH knock", s1.mac1, s2.mac1, ssh.mac1),
		fmt.Sprintf("E = %d (suite 1", s1.ct-offEnc),
		fmt.Sprintf("or %d (suite 2", s2.ct-offEnc),
		fmt.Sprintf("| 4+E | %d | `ct`", plaintextSize+aeadTagSize),
		fmt.Sprintf("| %d+E | %d | `mac1` |", offEnc+plaintextSize+aeadTagSize, mac1Size),
		fmt.Sprintf("KEM id `0x%X`", xwing.ID()),
		fmt.Sprintf("Public key (%d bytes)", kemPub),
		fmt.Sprintf("with the tag %d bytes, %d base64 characters", 1+kemPub, tagged),
		fmt.Sprintf("appends %d bytes after\nmac1", preauthSize),
		fmt.Sprintf("| S | %d | `token", tokenSize),
		fmt.Sprintf("| S+%d | %d | `mac2", tokenSize, mac2Size),
		fmt.Sprintf("divided by %d (integer division", int(tokenWindow.Seconds())),
		fmt.Sprintf("`0x%02x` pre-authenticated", flagPreauth),
		fmt.Sprintf("`0x%02x` a native knock (§3), `0x%02x` signed by an OpenSSH identity", KindNative, KindSSH),
		fmt.Sprintf("## 3. Plaintext (%d bytes)", plaintextSize),
		fmt.Sprintf("The packet is %d bytes: header %d, encapsulation %d,\n  sealed plaintext %d + %d, mac1 %d",
			PacketSizeSSH, headerSize, s1.ct-offEnc, plaintextSSHSize, aeadTagSize, mac1Size),
		fmt.Sprintf("324, %d (pre-authenticated) or %d (SSH) for suite 1; %d or %d for suite 2",
			PacketSize+preauthSize, PacketSizeSSH, PacketSizeXWing, PacketSizeXWing+preauthSize),
		`info = "` + string(hpkeInfo) + `"`,
		`"` + strings.TrimSuffix(string(mac1Label), "\x00") + `" ‖ 0x00`,
		`"` + strings.TrimSuffix(string(tokenLabel), "\x00") + `" ‖ 0x00`,
		`"` + strings.TrimSuffix(string(mac2Label), "\x00") + `" ‖ 0x00`,
		`"` + strings.TrimSuffix(string(secretLabel), "\x00") + `" ‖ 0x00`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("PROTOCOL.md does not say %q", want)
		}
	}
	if PacketSize != 324 {
		t.Errorf("check 1 names 324 for suite 1; the code says %d", PacketSize)
	}

	// §3's table, row by row: offset and size of every plaintext field.
	rows := regexp.MustCompile(`(?m)^\| (\d+) \| (\d+) \| (.+) \|$`).FindAllStringSubmatch(section("## 3. Plaintext", "\n## "), -1)
	fields := []struct{ off, size int }{
		{ptClient, 32}, {ptTime, 8}, {ptFlags, 1}, {ptAllow, 16}, {ptDest, 16}, {ptDuration, 4}, {ptNPorts, 1},
		{ptPorts, MaxPorts * 3}, {ptActLen, 1}, {ptAction, MaxActionLen}, {ptTo, 16}, {ptPad, ptSig - ptPad}, {ptSig, plaintextSize - ptSig},
	}
	if len(rows) != len(fields) {
		t.Fatalf("§3 has %d rows, the code %d fields", len(rows), len(fields))
	}
	for i, f := range fields {
		off, _ := strconv.Atoi(rows[i][1])
		size, _ := strconv.Atoi(rows[i][2])
		if off != f.off || size != f.size {
			t.Errorf("§3 row %d (%s): offset %d size %d; the code: %d, %d", i+1, rows[i][3], off, size, f.off, f.size)
		}
	}
}
