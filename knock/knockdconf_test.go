package knock

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/port"
)

// Debian's /etc/knockd.conf from knockd 0.8-2, unmodified.
func TestKnockdConfDebian(t *testing.T) {
	c, err := ReadKnockdConf("testdata/knockd.conf.debian")
	if err != nil {
		t.Fatal(err)
	}
	if !c.UseSyslog || len(c.Doors) != 3 {
		t.Fatalf("%+v", c)
	}
	open := c.Doors[0]
	if open.Name != "openSSH" || len(open.Sequence) != 3 || open.Sequence[2] != (Hit{port.TCP, 9000}) ||
		open.SeqTimeout != 5*time.Second || open.Flags != (Flags{Set: SYN}) || open.CmdTimeout != KnockdCmdTimeout ||
		open.StartCommand != "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT" || open.StopCommand != "" {
		t.Fatalf("openSSH: %+v", open)
	}
	if start, _ := open.Commands(srv); start != open.StartCommand {
		t.Fatal("IPv4 command")
	}
	if start, _ := open.Commands(netip6); start != open.StartCommand {
		t.Fatal("no Start_Command_6: IPv6 falls back to Start_Command")
	}
}

var netip6 = netip.MustParseAddr("2001:db8::2")

func TestKnockdConfManExamples(t *testing.T) {
	dir := t.TempDir()
	seqFile := filepath.Join(dir, "smtp_sequences")
	os.WriteFile(seqFile, []byte(" 1000,2000,3000\n"), 0o600)
	conf := `[options]
	logfile = /var/log/knockd.log
	Interface = veth0
	PidFile = /run/knockd.pid

[opencloseSSH]
	sequence      = 2222:udp,3333:tcp,4444:udp
	seq_timeout   = 15
	tcpflags      = syn,ack
	start_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT
	cmd_timeout   = 5
	stop_command  = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --syn -j ACCEPT

[opencloseSMTP]
	one_time_sequences = ` + seqFile + `
	Timeout            = 15
	TCPFlags           = fin,!ack
	Command            = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT
	Command_6          = /usr/sbin/ip6tables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT
	CMD_TIMEOUT        = 5
	stop_command       = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 25 -j ACCEPT
	stop_command_6     =
	target             = 198.18.0.99
`
	c, err := ParseKnockdConf("knockd.conf", []byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	if c.LogFile != "/var/log/knockd.log" || c.Interface != "veth0" || c.PidFile != "/run/knockd.pid" || c.UseSyslog {
		t.Fatalf("options %+v", c)
	}
	oc := c.Doors[0]
	if oc.SeqTimeout != 15*time.Second || oc.CmdTimeout != 5*time.Second || oc.Flags != (Flags{Set: SYN | ACK}) ||
		oc.Sequence[0] != (Hit{port.UDP, 2222}) || oc.StopCommand == "" {
		t.Fatalf("opencloseSSH %+v", oc)
	}
	smtp := c.Doors[1]
	if smtp.OneTime == nil || smtp.SeqTimeout != 15*time.Second || smtp.Flags != (Flags{Set: FIN, Clear: ACK}) ||
		smtp.Target.String() != "198.18.0.99" {
		t.Fatalf("opencloseSMTP %+v", smtp)
	}
	start6, stop6 := smtp.Commands(netip6)
	if !strings.HasPrefix(start6, "/usr/sbin/ip6tables") || stop6 != "" {
		t.Fatalf("IPv6 commands %q %q: Command_6 used, empty stop_command_6 disables", start6, stop6)
	}
}

func TestKnockdConfErrors(t *testing.T) {
	tests := []struct{ name, conf, want string }{
		{"bad unknown directive", "[d]\nsequence = 1,2\ncommand = x\nsequense = 3\n", "k.conf:4: sequense: unknown door directive"},
		{"bad port", "[d]\n  sequence = 1,70000\n  command = x\n", "k.conf:2: sequence"},
		{"bad timeout", "[d]\nsequence = 1,2\ncommand = x\nseq_timeout = soon\n", "k.conf:4: seq_timeout"},
		{"bad flags", "[d]\nsequence = 1,2\ncommand = x\ntcpflags = syn,ece\n", "k.conf:4: tcpflags"},
		{"bad no command", "[d]\nsequence = 1,2\n", "k.conf:1: Start_Command: the door does nothing"},
		{"bad no sequence", "[d]\ncommand = x\n", "k.conf:1: Sequence: missing"},
		{"bad option", "[options]\nlogfiles = x\n[d]\nsequence = 1\ncommand = x\n", "k.conf:2: logfiles: unknown [options]"},
		{"bad outside section", "sequence = 1\n", "k.conf:1: sequence: directive outside any [section]"},
		{"bad missing file", "[d]\none_time_sequences = /nonexistent/seq\ncommand = x\n", "k.conf:2: one_time_sequences"},
		{"bad no doors", "[options]\nUseSyslog\n", "no doors"},
		{"bad duplicate door", "[d]\nsequence = 1\ncommand = x\n[d]\nsequence = 2\ncommand = y\n", "k.conf:4: door name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKnockdConf("k.conf", []byte(tt.conf))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func FuzzKnockdConf(f *testing.F) {
	if data, err := os.ReadFile("testdata/knockd.conf.debian"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("[d]\nsequence = 1,2:udp\ncommand = x %IP%\nstop_command_6 =\ntarget = ::1\n"))
	f.Add([]byte("[options]\nUseSyslog\n[x\n=\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseKnockdConf("f.conf", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.conf:") {
				t.Fatalf("error without file and line: %v", err)
			}
			return
		}
		for _, d := range c.Doors {
			if len(d.Validate()) != 0 {
				t.Fatalf("accepted an invalid door %+v", d)
			}
		}
	})
}
