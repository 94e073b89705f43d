package client

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/port"
)

// A provisioning URI carries a profile there and back; anything it does
// not know or that is out of range is refused, and an import never
// replaces a profile.
func TestProvisionURI(t *testing.T) {
	pv := Provision{Host: "server.example.org", Port: 62202, ServerKey: "UzmaT+5u/es1U1t1Q6L5ofhxEHt/O43Y9UXuw/kzUDt3",
		TokenKey: "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=", Family: "ipv6", Duration: 45 * time.Second,
		Open: []port.Spec{{Proto: port.TCP, Num: 22}, {Proto: port.UDP, Num: 53}}}
	uri := pv.URI()
	if !strings.HasPrefix(uri, "postern://knock?") || !strings.Contains(uri, "v=1") || strings.Contains(uri, "key_file") {
		t.Fatalf("URI %q", uri)
	}
	back, err := ParseProvisionURI(uri)
	if err != nil || back.URI() != uri || back.Host != pv.Host || back.Port != pv.Port || back.ServerKey != pv.ServerKey ||
		back.TokenKey != pv.TokenKey || back.Family != pv.Family || back.Duration != pv.Duration || len(back.Open) != 2 {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	for _, bad := range []string{
		"https://knock?v=1&host=h&server_key=k",
		"postern://knock?v=2&host=h&server_key=k",
		"postern://knock?host=h&server_key=k",
		"postern://knock?v=1&server_key=k",
		"postern://knock?v=1&host=h&server_key=k&private_key=x",
		"postern://knock?v=1&host=h&server_key=k&port=0",
		"postern://knock?v=1&host=h&server_key=k&open=tcp/0",
		"postern://knock?v=1&host=h&server_key=k&family=ipx",
		"postern://knock?v=1&host=h&server_key=k&duration=-1s",
		"postern://knock?v=1&host=h&host=g&server_key=k",
	} {
		if _, err := ParseProvisionURI(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "client.toml")
	os.WriteFile(path, []byte("stun_servers = [\"stun.example.org:3478\"]\n"), 0o600)
	if err := AddSPAProfile(path, "office", "/k/client.key", back); err != nil {
		t.Fatal(err)
	}
	p, err := LoadSPAProfile(path, "office")
	if err != nil || p == nil || p.Host != pv.Host || p.Port != 62202 || p.KeyFile != "/k/client.key" || p.Network != "udp6" ||
		p.Duration != pv.Duration || len(p.Open) != 2 || p.TokenKey != pv.TokenKey || p.STUN[0] != "stun.example.org:3478" {
		t.Fatalf("imported profile %+v %v", p, err)
	}
	if data, _ := os.ReadFile(path); strings.Contains(string(data), "ssh_key") || strings.Contains(string(data), "= ''") {
		t.Errorf("the profile written carries empty keys:\n%s", data)
	}
	if err := AddSPAProfile(path, "office", "/k/other.key", back); err == nil || !strings.Contains(err.Error(), "not replacing") {
		t.Errorf("a second import under the same name: %v", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("client.toml mode %v", st.Mode().Perm())
	}
}
