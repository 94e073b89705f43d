package client

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseKnockArgs(t *testing.T) {
	tests := []struct {
		args []string
		udp  bool
		want string
	}{
		{[]string{"7000", "8000:udp", "9000:tcp"}, false, "[tcp/7000 udp/8000 tcp/9000]"},
		{[]string{"7000", "8000:tcp"}, true, "[udp/7000 tcp/8000]"},
		{[]string{"7000:sctp"}, false, "[tcp/7000]"}, // knock(1): any other suffix is TCP
		{[]string{"64:icmp", "7000"}, false, "[icmp/64 tcp/7000]"},
	}
	for _, tt := range tests {
		got, err := ParseKnockArgs(tt.args, tt.udp)
		if err != nil || fmt.Sprint(got) != tt.want {
			t.Errorf("ParseKnockArgs(%q, %v) = %v, %v; want %s", tt.args, tt.udp, got, err, tt.want)
		}
	}
	for _, bad := range [][]string{nil, {"70000"}, {"x"}, {"2000:icmp"}} {
		if _, err := ParseKnockArgs(bad, false); err == nil {
			t.Errorf("ParseKnockArgs(%q) accepted", bad)
		}
	}
}

func TestLoadProfile(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "s")
	os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600)
	path := filepath.Join(dir, "client.toml")
	os.WriteFile(path, []byte(`[[door]]
name = "ssh"
host = "server.example.org"
sequence = ["tcp/7000", "udp/8000", "icmp/64"]
delay = "50ms"

[[door]]
name = "rot"
secret_file = "`+secret+`"
period = "60s"
port_range = "30000-30999"
`), 0o600)
	p, err := LoadProfile(path, "ssh")
	if err != nil || p.Host != "server.example.org" || fmt.Sprint(p.Hits) != "[tcp/7000 udp/8000 icmp/64]" || p.Delay != 50*time.Millisecond {
		t.Fatalf("%+v %v", p, err)
	}
	r, err := LoadProfile(path, "rot")
	if err != nil || r.Rotating == nil || r.Rotating.Period != time.Minute || r.Rotating.Lo != 30000 || r.Rotating.Length != 4 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := LoadProfile(path, "nope"); err == nil || !strings.Contains(err.Error(), `no door called "nope"`) {
		t.Fatalf("missing door: %v", err)
	}
	os.WriteFile(path, []byte("[[door]]\nname = \"x\"\nsequense = []\n"), 0o600)
	if _, err := LoadProfile(path, "x"); err == nil || !strings.Contains(err.Error(), path+":3: door.sequense: unknown key") {
		t.Fatalf("unknown key: %v", err)
	}
	os.Chmod(secret, 0o644)
	if _, err := NewRotating(secret, "", 0, "", ""); err == nil {
		t.Fatal("world-readable secret accepted")
	}
}
