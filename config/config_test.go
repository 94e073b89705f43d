package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

func TestReference(t *testing.T) {
	data, err := os.ReadFile("reference.toml")
	if err != nil {
		t.Fatal(err)
	}
	// The reference names a secret file; give it one, and keep the rest.
	secret := filepath.Join(t.TempDir(), "rotating.secret")
	os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	data = []byte(strings.Replace(string(data), "/etc/postern/rotating.secret", secret, 1))
	data = []byte(strings.Replace(string(data), "/etc/postern/alice.covert", secret, 1))
	access := filepath.Join(t.TempDir(), "access.conf")
	os.WriteFile(access, []byte("SOURCE ANY\nKEY k\nHMAC_KEY h\nOPEN_PORTS tcp/22, tcp/443\n"), 0o600)
	data = []byte(strings.Replace(string(data), "/etc/fwknop/access.conf", access, 1))
	const edKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	keys := filepath.Join(t.TempDir(), "authorized_keys")
	os.WriteFile(keys, []byte("# comment\nfrom=\"198.18.0.0/24\",postern-allow=\"tcp/22\" "+edKey+" alice@laptop\n"), 0o600)
	ca := filepath.Join(t.TempDir(), "ssh_ca.pub")
	os.WriteFile(ca, []byte(edKey+" ca\n"), 0o600)
	data = []byte(strings.Replace(string(data), "/etc/postern/authorized_keys", keys, 1))
	data = []byte(strings.Replace(string(data), "/etc/postern/ssh_ca.pub", ca, 1))
	cfg, err := Parse("reference.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interface != "eth0" || cfg.Capture != "afpacket" || cfg.SPA.Port != 62201 || cfg.SPA.MaxSkew != 30*time.Second ||
		cfg.Firewall.Backend != "nftables" || cfg.Firewall.RemoveOnExit || len(cfg.Clients) != 1 ||
		cfg.SSH == nil || len(cfg.SSH.Identities) != 2 || cfg.SSH.Identities[0].Name != "ssh:alice@laptop" || len(cfg.SSH.Trust.CAs) != 1 {
		t.Fatalf("reference parsed as %+v", cfg)
	}
	if len(cfg.Doors) != 2 || cfg.MaxTracked != 100000 || cfg.Doors[1].Rotating == nil || cfg.Doors[1].Rotating.Lo != 20000 {
		t.Fatalf("reference doors %+v", cfg.Doors)
	}
	if cfg.Fwknop == nil || cfg.Fwknop.Port != 62201 || cfg.Fwknop.MaxPacketAge != 120*time.Second || len(cfg.Fwknop.Stanzas) != 1 {
		t.Fatalf("reference [fwknop] %+v", cfg.Fwknop)
	}
	if len(cfg.Covert) != 1 || cfg.Covert[0].Port != 4444 || len(cfg.Covert[0].Clients) != 1 || cfg.Covert[0].Clients[0].Duration != 30*time.Second {
		t.Fatalf("reference [[covert]] %+v", cfg.Covert)
	}
	if len(cfg.Protected()) != 2 {
		t.Fatalf("protected %v", cfg.Protected())
	}
	c := cfg.Clients[0]
	if c.Name != "alice-laptop" || c.MaxDuration != 5*time.Minute || c.DefaultDuration != 30*time.Second ||
		len(c.Allow) != 1 || c.Allow[0] != (port.Spec{Proto: port.TCP, Num: 22}) {
		t.Fatalf("reference client %+v", c)
	}
	// Every key the decoder knows appears in the reference file.
	for _, key := range []string{"interface", "capture", "private_key_file", "state_dir", "metrics_listen",
		"metrics_allow_public", "metrics_token_file", "grant", "idle",
		"port", "max_skew", "destinations", "workers", "backend", "on_exit",
		"name", "public_key", "allow", "max_duration", "default_duration", "allow_source",
		"knockd_file", "max_tracked", "sequence", "one_time_sequences", "seq_timeout", "tcp_flags", "target",
		"open", "duration", "start_command", "start_command_6", "stop_command", "stop_command_6", "cmd_timeout",
		"secret_file", "period", "length", "port_range", "protocol", "access_file", "max_packet_age",
		"forward", "protect", "published", "forwarding", "local_nat", "snat", "snat_translate_ip"} {
		if !strings.Contains(string(data), "\n"+key+" = ") {
			t.Errorf("reference.toml does not show %q", key)
		}
	}
}

func clientKey(t *testing.T) string {
	k, err := spa.GenerateClientKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

func TestMinimalDefaults(t *testing.T) {
	cfg, err := Parse("p.toml", []byte(`interface = "any"
private_key_file = "/k"
[[client]]
name = "a"
public_key = "`+clientKey(t)+`"
allow = ["tcp/22", "tcp/22", "udp/53"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != DefaultStateDir || cfg.SPA.Port != DefaultSPAPort || len(cfg.Protected()) != 2 || cfg.UsesGateway() ||
		cfg.Clients[0].DefaultDuration != DefaultDuration || cfg.Clients[0].MaxDuration != DefaultMaxDuration {
		t.Fatalf("%+v", cfg)
	}
}

func TestInterfaceList(t *testing.T) {
	cfg, err := Parse("p.toml", []byte(`interface = ["eth0", "wg0", "eth0"]
private_key_file = "/k"
[[client]]
name = "a"
public_key = "`+clientKey(t)+`"
allow = ["tcp/22"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Interfaces, []string{"eth0", "wg0"}) || cfg.Interface != "eth0,wg0" {
		t.Fatalf("interfaces %q, interface %q", cfg.Interfaces, cfg.Interface)
	}
}

func TestErrorsNameFileLineKey(t *testing.T) {
	good := clientKey(t)
	tests := []struct {
		name, doc, want string
	}{
		{"bad unknown top-level key", "interfaces = \"eth0\"\n", "p.toml:1: interfaces: unknown key"},
		{"bad unknown nested key", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[spa]\nprot = 1\n", "p.toml:4: spa.prot: unknown key"},
		{"bad type", "interface = \"eth0\"\n[spa]\nport = \"high\"\n", "p.toml:3"},
		{"bad syntax", "interface = \n", "p.toml:1"},
		{"bad port range", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[spa]\nport = 70000\n", "p.toml:4: spa.port: 70000"},
		{"bad duration", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[spa]\nmax_skew = \"soon\"\n", "p.toml:4: spa.max_skew"},
		{"bad allow", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/99999\"]\n", "p.toml:6: client[1].allow"},
		{"bad key", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"xyz\"\nallow = [\"tcp/22\"]\n", "p.toml:5: client[1].public_key"},
		{"bad second client missing key", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\n\n[[client]]\nname = \"b\"\nallow = [\"tcp/22\"]\n", "p.toml:8: client[2].public_key: missing"},
		{"bad duplicate key", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\n[[client]]\nname = \"b\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\n", "p.toml:9: client[2].public_key: same key as client \"a\""},
		{"bad default over max", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\nmax_duration = \"10s\"\ndefault_duration = \"20s\"\n", "p.toml:8: client[1].default_duration"},
		{"bad missing private key", "interface = \"eth0\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\n", "p.toml: private_key_file: missing"},
		{"bad nothing to knock", "interface = \"eth0\"\n", "p.toml: client: no [[client]], [ssh], [[door]], knockd_file, [fwknop] or [[covert]]"},
		{"bad interface type", "interface = 7\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\n", "p.toml:1: interface"},
		{"bad interface name", "interface = [\"eth0\", \"a/b\"]\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\n", "p.toml:1: interface: \"a/b\""},
		{"bad any in a list", "interface = [\"eth0\", \"any\"]\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"tcp/22\"]\n", "p.toml:1: interface"},
		{"bad backend", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[firewall]\nbackend = \"pf\"\n", "p.toml:4: firewall.backend"},
		{"bad knock port opened", "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\nallow = [\"udp/62201\"]\n", "spa.port: udp/62201 is both"},
		{"bad grant mode", "interface = \"eth0\"\n[[door]]\nname = \"d\"\nsequence = [\"tcp/7000\"]\nopen = [\"tcp/22\"]\ngrant = \"twice\"\n", "door[1].grant: \"twice\""},
		{"bad once and idle", "interface = \"eth0\"\n[[door]]\nname = \"d\"\nsequence = [\"tcp/7000\"]\nopen = [\"tcp/22\"]\ngrant = \"once\"\nidle = \"1m\"\n", "door[1].idle: grant (counted connections) and idle exclude each other"},
		{"bad metrics on every address", "interface = \"eth0\"\nmetrics_listen = \":9101\"\n", "p.toml:2: metrics_listen: \":9101\" is not a loopback address"},
		{"bad metrics on a public address", "interface = \"eth0\"\nmetrics_listen = \"198.18.0.1:9101\"\n", "metrics_allow_public = true"},
		{"bad metrics token file missing", "interface = \"eth0\"\nmetrics_token_file = \"/nonexistent/token\"\n", "metrics_token_file: open /nonexistent/token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.toml", []byte(tt.doc))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// metrics_listen beyond loopback needs metrics_allow_public; the token
// file is read as a secret (mode 0600).
func TestMetricsEndpointSettings(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte("0123456789abcdef0123\n"), 0o644)
	base := "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[door]]\nname = \"d\"\nsequence = [\"tcp/7000\"]\nopen = [\"tcp/22\"]\n"
	doc := "metrics_listen = \"0.0.0.0:9101\"\nmetrics_allow_public = true\nmetrics_token_file = \"" + tok + "\"\n" + base
	if _, err := Parse("p.toml", []byte(doc)); err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Fatalf("a token file others may read: %v", err)
	}
	os.Chmod(tok, 0o600)
	cfg, err := Parse("p.toml", []byte(doc))
	if err != nil || cfg.MetricsToken != "0123456789abcdef0123" {
		t.Fatalf("public metrics with a token: %v %+v", err, cfg)
	}
	if _, err := Parse("p.toml", []byte("metrics_listen = \"[::1]:9101\"\n"+base)); err != nil {
		t.Fatalf("loopback metrics: %v", err)
	}
}

func TestErrorTypes(t *testing.T) {
	_, err := Parse("p.toml", []byte("capture = \"pcap\"\n[[client]]\nname = \"a\"\n"))
	var es Errors
	if !errors.As(err, &es) || len(es) < 2 {
		t.Fatalf("want every problem at once, got %v", err)
	}
}

// FuzzParse: any text gives a Config or an error, never a panic, and every
// error names the file.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("reference.toml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("[[client]]\n[[client]]\nname = 1\n"))
	f.Add([]byte("[spa]\nport = -1\nmax_skew = \"1h\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.toml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.toml") {
				t.Fatalf("error without file name: %v", err)
			}
			return
		}
		if len(cfg.Clients) == 0 || cfg.PrivateKeyFile == "" {
			t.Fatalf("accepted an unusable config: %+v", cfg)
		}
	})
}

func TestDoors(t *testing.T) {
	dir := t.TempDir()
	knockd := filepath.Join(dir, "knockd.conf")
	os.WriteFile(knockd, []byte("[options]\n Interface = veth7\n[openSSH]\n sequence = 7000,8000\n command = true\n"), 0o644)
	cfg, err := Parse("p.toml", []byte(`knockd_file = "`+knockd+`"
[[door]]
name = "ping"
sequence = ["icmp/64", "icmp/128"]
open = ["tcp/22"]
tcp_flags = ""
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interface != "veth7" || len(cfg.Doors) != 2 || cfg.Doors[0].Name != "openSSH" || cfg.Doors[1].Sequence[1].Num != 128 ||
		cfg.Doors[1].SeqTimeout != DefaultDoorTimeout || cfg.Doors[1].Flags.Set != 0 || cfg.Doors[1].Duration != DefaultDuration {
		t.Fatalf("%+v", cfg)
	}

	// Each document follows an "interface" line: line numbers count it.
	bad := map[string]string{
		"[[door]]\nname = \"d\"\nopen = [\"tcp/22\"]\nsequence = [\"tcp/7000\", \"sctp/1\"]\n":            "p.toml:5: door[1].sequence",
		"[[door]]\nname = \"d\"\nsequence = [\"tcp/7000\"]\n":                                             "p.toml:2: door[1].open: the door does nothing",
		"[[door]]\nname = \"d\"\nsequence = [\"tcp/1\"]\nopen = [\"tcp/22\"]\nperiod = \"30s\"\n":         "p.toml:6: door[1].period: only for rotating doors",
		"[[door]]\nname = \"d\"\nsecret_file = \"/nonexistent\"\nopen = [\"tcp/22\"]\n":                   "p.toml:4: door[1].secret_file",
		"capture = \"udp\"\n[[door]]\nname = \"d\"\nsequence = [\"tcp/1\"]\nopen = [\"tcp/22\"]\n":        "p.toml:2: capture",
		"knockd_file = \"" + knockd + ".missing\"\n":                                                      "p.toml:2: knockd_file",
		"[knock]\nmax_tracked = 1\n[[door]]\nname = \"d\"\nsequence = [\"tcp/1\"]\nopen = [\"tcp/22\"]\n": "p.toml:3: knock.max_tracked",
	}
	for doc, want := range bad {
		_, err := Parse("p.toml", []byte("interface = \"eth0\"\n"+doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", doc, err, want)
		}
	}
	// An error inside the knockd file names that file and line.
	os.WriteFile(knockd, []byte("[d]\n sequence = 1,2\n command = x\n bogus = 1\n"), 0o644)
	_, err = Parse("p.toml", []byte(`interface = "eth0"
knockd_file = "`+knockd+`"`))
	if err == nil || !strings.Contains(err.Error(), knockd+":4: bogus") {
		t.Fatalf("knockd error: %v", err)
	}
}

func TestCovertConfig(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "s")
	os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600)
	doc := `interface = "eth0"
[[covert]]
name = "a"
port = 4444

[[covert.client]]
name = "x"
secret_file = "` + secret + `"
allow = ["tcp/22"]

[[covert]]
name = "b"
port = 4445

[[covert.client]]
name = "y"
secret_file = "` + secret + `"
allow = ["tcp/22"]

[[covert.client]]
name = "z"
secret_file = "` + secret + `"
allow = ["tcp/0"]
`
	_, err := Parse("p.toml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), "p.toml:23: covert[2].client[2].allow") {
		t.Fatalf("nested array table error: %v", err)
	}
	if _, err := Parse("p.toml", []byte("capture = \"udp\"\n"+strings.Replace(doc, "tcp/0", "udp/53", 1))); err == nil ||
		!strings.Contains(err.Error(), "p.toml:1: capture") {
		t.Fatalf("covert with udp capture: %v", err)
	}
	cfg, err := Parse("p.toml", []byte(strings.Replace(doc, "tcp/0", "udp/53", 1)))
	if err != nil || len(cfg.Covert) != 2 || len(cfg.Covert[1].Clients) != 2 || len(cfg.Protected()) != 2 {
		t.Fatalf("%+v %v", cfg, err)
	}
}

// A bad line in an OpenSSH file named by [ssh] is an error with that
// file's name and line.
func TestSSHFileErrors(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "authorized_keys")
	os.WriteFile(keys, []byte("# ok\n\nssh-ed25519 not-base64 x\n"), 0o600)
	_, err := Parse("p.toml", []byte("interface = \"eth0\"\nprivate_key_file = \"/k\"\n[ssh]\nauthorized_keys = \""+keys+"\"\n"))
	if err == nil || !strings.Contains(err.Error(), keys+":3") {
		t.Fatalf("error %v, want %s:3", err, keys)
	}
	ca := filepath.Join(dir, "ca.pub")
	os.WriteFile(ca, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ca\n"), 0o600)
	_, err = Parse("p.toml", []byte("interface = \"eth0\"\nprivate_key_file = \"/k\"\n[ssh]\ntrusted_user_ca_keys = \""+ca+"\"\n"))
	if err == nil || !strings.Contains(err.Error(), "ssh.principal") {
		t.Fatalf("a CA without principals: %v", err)
	}
}

func TestGatewayConfig(t *testing.T) {
	good := clientKey(t)
	doc := "interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \"" + good + "\"\n" +
		"forward = [\"10.77.1.2:tcp/22\", \"10.77.1.2:tcp/80 via 8080 masquerade\", \"[fd77::2]:udp/53 snat fd77::9\"]\n" +
		"[gateway]\nprotect = [\"10.77.1.5:tcp/443\"]\npublished = true\n"
	cfg, err := Parse("p.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	fw := cfg.Clients[0].Forward
	if len(fw) != 3 || fw[1].External != 8080 || !fw[1].Masquerade || fw[2].SNAT != netip.MustParseAddr("fd77::9") ||
		fw[2].Port.Proto != port.UDP {
		t.Errorf("forward: %+v", fw)
	}
	if !cfg.UsesGateway() {
		t.Error("a configuration with forward destinations uses no gateway")
	}
	if !cfg.Gateway.Published || len(cfg.Forwarded()) != 4 {
		t.Errorf("gateway %+v, forwarded %v", cfg.Gateway, cfg.Forwarded())
	}
	if len(cfg.Protected()) != 0 {
		t.Errorf("a client with only forward destinations protects host ports %v", cfg.Protected())
	}

	for _, tt := range []struct{ name, extra, want string }{
		{"bad forward host", "forward = [\"gw:tcp/22\"]\n", "p.toml:6: client[1].forward: \"gw:tcp/22\": the host must be"},
		{"bad forward via", "forward = [\"10.0.0.5:tcp/22 via x\"]\n", "client[1].forward: \"10.0.0.5:tcp/22 via x\": via takes a port"},
		{"bad forward snat family", "forward = [\"10.0.0.5:tcp/22 snat fd00::1\"]\n", "snat takes a unicast address of the destination's family"},
		{"bad forward both", "forward = [\"10.0.0.5:tcp/22 masquerade snat 10.0.0.1\"]\n", "unexpected \"snat\""},
		{"bad protect translation", "forward = [\"10.0.0.5:tcp/22\"]\n[gateway]\nprotect = [\"10.0.0.6:tcp/22 via 2\"]\n", "p.toml:8: gateway.protect"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.toml", []byte("interface = \"eth0\"\nprivate_key_file = \"/k\"\n[[client]]\nname = \"a\"\npublic_key = \""+good+"\"\n"+tt.extra))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestFwknopNATNeedsForwarding(t *testing.T) {
	dir := t.TempDir()
	access := filepath.Join(dir, "access.conf")
	os.WriteFile(access, []byte("SOURCE ANY\nKEY k\nOPEN_PORTS tcp/22\nFORCE_NAT 10.77.1.2 22\n"), 0o600)
	doc := "interface = \"eth0\"\n[fwknop]\naccess_file = \"" + access + "\"\n"
	_, err := Parse("p.toml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), "access.conf:4: FORCE_NAT, FORCE_SNAT and FORCE_MASQUERADE need [fwknop] forwarding = true") {
		t.Fatalf("error %v", err)
	}
	cfg, err := Parse("p.toml", []byte(doc+"forwarding = true\nsnat = true\nsnat_translate_ip = \"10.77.1.9\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Fwknop.NAT.Forwarding || !cfg.Fwknop.NAT.SNAT || len(cfg.Forwarded()) != 2 || !cfg.UsesGateway() {
		t.Errorf("NAT %+v, forwarded %v", cfg.Fwknop.NAT, cfg.Forwarded())
	}
}

// grant = "once" and {connections = N} count the connections a grant lets
// in; the firewall sets up one slot per connection of the largest.
func TestGrantConnections(t *testing.T) {
	door := "interface = \"eth0\"\n[[door]]\nname = \"d\"\nsequence = [\"tcp/7000\"]\nopen = [\"tcp/22\"]\n"
	cfg, err := Parse("p.toml", []byte(door+"grant = { connections = 3 }\n[[door]]\nname = \"e\"\nsequence = [\"tcp/7001\"]\nopen = [\"tcp/23\"]\ngrant = \"once\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if n, idle := cfg.Lifetimes(); cfg.Doors[0].Lifetime.Connections != 3 || cfg.Doors[1].Lifetime.Connections != 1 || n != 3 || len(idle) != 0 {
		t.Fatalf("lifetimes %+v %+v, slots %d", cfg.Doors[0].Lifetime, cfg.Doors[1].Lifetime, n)
	}
	if m := cfg.Doors[0].Lifetime.Mode(); m != "3 connections" {
		t.Errorf("mode %q", m)
	}
	for _, bad := range []string{"{ connections = 0 }", "{ connections = 9 }", "{ connections = \"2\" }", "{ connections = 2, idle = 1 }", "{}", "2"} {
		_, err := Parse("p.toml", []byte(door+"grant = "+bad+"\n"))
		if err == nil || !strings.Contains(err.Error(), "p.toml:6: door[1].grant") {
			t.Errorf("grant = %s: error %v, want it named at p.toml:6", bad, err)
		}
	}
}

// TOML's own errors in the user's words: a top-level key under a table, a
// near miss, a value of the wrong kind.
func TestDecodeErrorsExplain(t *testing.T) {
	door := "interface = \"eth0\"\n[[door]]\nname = \"d\"\nsequence = [\"tcp/7000\"]\n"
	for doc, want := range map[string]string{
		door + "open = [\"tcp/22\"]\nprivate_key_file = \"/k\"\n": "p.toml:6: door.private_key_file: unknown key; private_key_file is a top-level key: TOML puts every key after a [[door]] header into that table",
		door + "open = [\"tcp/22\"]\nseq_timout = \"5s\"\n":       "p.toml:6: door.seq_timout: unknown key; did you mean seq_timeout?",
		door + "open = [22]\n":                                    "p.toml:5: door.open: want a string in double quotes, not a TOML integer",
		"interface = \"eth0\"\n[firewall]\nbackend = 1\n":         "p.toml:3: firewall.backend: want a string in double quotes, not a TOML integer",
		"interface = \"eth0\"\nzzz = 1\n":                         "p.toml:2: zzz: unknown key",
	} {
		_, err := Parse("p.toml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n got %v\nwant %q", doc, err, want)
		}
	}
}
