package main

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/postern/postern/fko"
	"github.com/postern/postern/internal/netnstest"
)

// The fwknop client, the real one and postern's, from the same .fwknoprc
// and command line: the SPA fields they build agree (the random value
// aside; the timestamps within a few seconds). The cases are the rc-file
// forms a migrating user has and that postern once read otherwise.
func TestFwknopClientRCDifferential(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "fwknop")
	dir := t.TempDir()
	base := "[default]\nKEY_BASE64 " + fwKey + "\n"
	cases := []struct {
		name, rc string
		args     []string
	}{
		// -a wins over RESOLVE_IP_HTTPS: no lookup (there is no network
		// here: a lookup would fail the knock), the address given.
		{"-a over RESOLVE_IP_HTTPS", base + "RESOLVE_IP_HTTPS Y\n", nil},
		{"-a over RESOLVE_URL", base + "RESOLVE_URL https://203.0.113.1/myip\n", nil},
		{"NAT_ACCESS host,port", base + "NAT_ACCESS 10.77.1.2,2200\n", nil},
		{"NAT_ACCESS host:port", base + "NAT_ACCESS 10.77.1.2:2200\n", nil},
		{"NAT_ACCESS host alone", base + "NAT_ACCESS 10.77.1.2\n", nil},
		{"TIME_OFFSET minutes", base + "TIME_OFFSET 1M\n", nil},
		{"TIME_OFFSET negative hours", base + "TIME_OFFSET -1H\n", nil},
		{"TIME_OFFSET days", base + "TIME_OFFSET 2d\n", nil},
		{"TIME_OFFSET seconds", base + "TIME_OFFSET 90\n", nil},
		{"--time-offset-plus with a unit", base, []string{"--time-offset-plus", "1M"}},
		{"--time-offset-minus with a unit", base, []string{"--time-offset-minus", "1H"}},
		{"GPG_SIGNING_PW as the only key", "[default]\nGPG_SIGNING_PW onlykey12345\n", nil},
	}
	fields := func(t *testing.T, out string) map[string]string {
		got := map[string]string{}
		for _, line := range strings.Split(out, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if _, seen := got[k]; !seen {
				v, _, _ = strings.Cut(v, " ") // "2 (NAT access msg)" → "2"
				got[k] = v
			}
		}
		return got
	}
	// What both refuse.
	long := base64.StdEncoding.EncodeToString(make([]byte, 160))
	for i, rcText := range []string{
		base + "HMAC_KEY_BASE64 " + long + "\n", // decoded key longer than 128 bytes
	} {
		rc := filepath.Join(dir, "refused"+strconv.Itoa(i))
		os.WriteFile(rc, []byte(rcText), 0o600)
		args := []string{"--rc-file", rc, "-A", "tcp/22", "-a", "10.9.9.2", "-D", "198.18.0.1", "-T"}
		_, rerr := exec.Command("fwknop", append([]string{"--no-save-args"}, args...)...).CombinedOutput()
		out, oerr := exec.Command(posternBin, append([]string{"fwknop"}, args...)...).CombinedOutput()
		if rerr == nil || oerr == nil {
			t.Errorf("refused case %d: fwknop %v, postern %v\n%s", i, rerr, oerr, out)
		}
	}
	for i, c := range cases {
		rc := filepath.Join(dir, "rc"+strconv.Itoa(i))
		os.WriteFile(rc, []byte(c.rc), 0o600)
		args := append([]string{"--rc-file", rc, "-A", "tcp/22", "-a", "10.9.9.2", "-D", "198.18.0.1", "-T", "-v"}, c.args...)
		realPkt, oursPkt := filepath.Join(dir, "real"+strconv.Itoa(i)), filepath.Join(dir, "ours"+strconv.Itoa(i))
		real, err := exec.Command("fwknop", append([]string{"--no-save-args", "-B", realPkt}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: fwknop: %v\n%s", c.name, err, real)
			continue
		}
		ours, err := exec.Command(posternBin, append([]string{"fwknop", "-B", oursPkt}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: postern fwknop: %v\n%s", c.name, err, ours)
			continue
		}
		w, g := fields(t, string(real)), fields(t, string(ours))
		for _, k := range []string{"Message Type", "Message String", "Nat Access", "Client Timeout"} {
			if w[k] != g[k] && !(k == "Nat Access" && w[k] == "<NULL>" && g[k] == "") {
				t.Errorf("%s: %s: fwknop %q, postern %q", c.name, k, w[k], g[k])
			}
		}
		wt, _ := strconv.ParseInt(w["Timestamp"], 10, 64)
		gt, _ := strconv.ParseInt(g["Timestamp"], 10, 64)
		if d := wt - gt; d < -5 || d > 5 {
			t.Errorf("%s: timestamps %d (fwknop) and %d (postern)", c.name, wt, gt)
		}
		if strings.HasPrefix(c.rc, "[default]\nGPG_SIGNING_PW") {
			// Both packets open with the passphrase as the Rijndael key.
			for who, file := range map[string]string{"fwknop": realPkt, "postern": oursPkt} {
				pkt, _ := os.ReadFile(file)
				if _, _, err := (&fko.Keys{Key: []byte("onlykey12345")}).Open(strings.TrimSpace(string(pkt))); err != nil {
					t.Errorf("%s: %s's packet does not open with GPG_SIGNING_PW as the key: %v", c.name, who, err)
				}
			}
		}
	}
}
