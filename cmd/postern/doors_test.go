package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/knock"
)

// Debian's /etc/knockd.conf (knockd 0.8-2) with only the ports and the
// interface changed: the [options] Interface line and 7xxx/8xxx/9xxx ports.
const debianKnockdConf = `[options]
	UseSyslog
	Interface = veth0

[openSSH]
	sequence    = 7100,8100,9100
	seq_timeout = 5
	command     = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
	tcpflags    = syn

[closeSSH]
	sequence    = 9100,8100,7100
	seq_timeout = 5
	command     = /sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
	tcpflags    = syn

[openHTTPS]
	sequence    = 12345,54321,24680,13579
	seq_timeout = 5
	command     = /usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%
	tcpflags    = syn
`

// The real knock(1) against Debian's knockd.conf read as-is by postern.
func TestRealKnockWithDebianKnockdConf(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "knock", "iptables")
	r := newRig(t, rigOptions{noSPA: true})
	conf := r.writeFile("knockd.conf", debianKnockdConf)
	r.writeFile("postern.toml", fmt.Sprintf("state_dir = %q\nknockd_file = %q\n", r.dir+"/state", conf))
	r.dropByDefault()
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	r.requireClosed(cli, srv, "before the knock")

	r.clientRun("knock", srv.String(), "7100", "8100", "9100")
	r.out.WaitFor(t, 2*time.Second, "msg=granted language=door", "client=openSSH", "src="+cli.String())
	r.waitOpen(cli, srv, 2*time.Second, "after knock 7100 8100 9100").Close()
	r.requireClosed(r.p.Client4b, srv, "another client address")

	r.clientRun("knock", srv.String(), "9100", "8100", "7100")
	r.out.WaitFor(t, 2*time.Second, "client=closeSSH")
	r.waitClosed(cli, srv, 2*time.Second, "after the closing knock")
}

// start_command / stop_command / cmd_timeout: the port closes after
// cmd_timeout.
func TestRealKnockStartStopCommands(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "knock", "iptables")
	r := newRig(t, rigOptions{noSPA: true})
	conf := r.writeFile("knockd.conf", `[options]
	LogFile = `+r.dir+`/knockd.log
	PidFile = `+r.dir+`/knockd.pid
[opencloseSSH]
	sequence      = 2222:udp,3333:tcp,4444:udp
	seq_timeout   = 15
	tcpflags      = syn
	start_command = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
	cmd_timeout   = 3
	stop_command  = /sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
`)
	r.writeFile("postern.toml", fmt.Sprintf("interface = %q\nstate_dir = %q\nknockd_file = %q\n", netnstest.Interface, r.dir+"/state", conf))
	r.dropByDefault()
	r.start()
	waitFile(t, r.dir+"/knockd.pid", fmt.Sprintf("%d\n", r.daemon.Process.Pid), time.Second)
	// logrotate's SIGHUP: knockd reopens its log; postern must not die.
	r.daemon.Process.Signal(syscall.SIGHUP)
	r.out.WaitFor(t, time.Second, "msg=reloaded")
	r.alive()
	srv, cli := r.p.Server4, r.p.Client4
	r.clientRun("knock", srv.String(), "2222:udp", "3333:tcp", "4444:udp")
	knocked := time.Now()
	r.waitOpen(cli, srv, 2*time.Second, "after the knock").Close()
	time.Sleep(time.Until(knocked.Add(3 * time.Second)))
	r.waitClosed(cli, srv, 2*time.Second, "after cmd_timeout")
	r.out.WaitFor(t, time.Second, "msg=\"stop command ran\"", "door=opencloseSSH")
	waitFile(t, r.dir+"/knockd.log", cli.String()+": opencloseSSH: OPEN SESAME", time.Second)
	waitFile(t, r.dir+"/knockd.log", cli.String()+": opencloseSSH: Stage 2", time.Second)
	r.signal(syscall.SIGTERM)
	if _, err := os.Stat(r.dir + "/knockd.pid"); !os.IsNotExist(err) {
		t.Fatalf("PidFile left after exit: %v", err)
	}
	// knockd's lines and nothing else: every stage (the last one too)
	// before OPEN SESAME, the commands, "shutting down" at the end.
	data, _ := os.ReadFile(r.dir + "/knockd.log")
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if !regexp.MustCompile(`^\[\d{4}-\d\d-\d\d \d\d:\d\d\] `).MatchString(l) || strings.Contains(l, "msg=") {
			t.Fatalf("not a knockd line: %q in\n%s", l, data)
		}
		lines = append(lines, l[19:])
	}
	want := []string{"starting up, listening on veth0", cli.String() + ": opencloseSSH: Stage 1", cli.String() + ": opencloseSSH: Stage 2",
		cli.String() + ": opencloseSSH: Stage 3", cli.String() + ": opencloseSSH: OPEN SESAME", "shutting down"}
	for _, w := range want {
		if !slices.Contains(lines, w) {
			t.Fatalf("knockd.log lacks %q:\n%s", w, data)
		}
	}
	if slices.Index(lines, want[3]) > slices.Index(lines, want[4]) || lines[len(lines)-1] != "shutting down" {
		t.Fatalf("knockd.log order:\n%s", data)
	}
}

// A postern.toml [[door]] with open: a grant with kernel expiry, knocked by
// the real knock(1).
func TestRealKnockOpensTomlDoor(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "knock")
	r := newRig(t, rigOptions{noSPA: true, extra: `
[[door]]
name = "ssh"
sequence = ["tcp/7000", "udp/8000", "tcp/9000"]
seq_timeout = "5s"
tcp_flags = "syn,!ack"
open = ["tcp/22"]
duration = "3s"
`})
	r.start()
	srv, cli := r.p.Server6, r.p.Client6
	r.requireClosed(cli, srv, "before the knock")
	r.clientRun("knock", "-6", srv.String(), "7000", "8000:udp", "9000")
	knocked := time.Now()
	r.waitOpen(cli, srv, time.Second, "after the knock").Close()
	r.requireClosed(r.p.Client6b, srv, "another client address")
	time.Sleep(time.Until(knocked.Add(3 * time.Second)))
	r.waitClosed(cli, srv, time.Second, "after duration")
	// The sequence ports are closed: a knock hit gets no RST back.
	r.requireKnockPortSilent(cli, srv, 7000)
}

// requireKnockPortSilent checks that a TCP connection attempt to a knock
// port times out: the SYN was dropped, no RST came back.
func (r *rig) requireKnockPortSilent(from, to netip.Addr, p uint16) {
	r.t.Helper()
	c, err := r.p.Client.Dial("tcp", from, netip.AddrPortFrom(to, p), probeTimeout)
	if err == nil {
		c.Close()
		r.t.Fatalf("knock port %d accepted a connection", p)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		r.t.Fatalf("knock port %d answered: %v (want a dropped SYN)", p, err)
	}
}

// postern's knock(1)-compatible client against the real knockd.
func TestPosternKnockOpensRealKnockd(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "knockd", "iptables")
	r := newRig(t, rigOptions{noSPA: true})
	r.dropByDefault()
	conf := r.writeFile("knockd.conf", `[options]
	LogFile = `+r.dir+`/knockd.log
	Interface = veth0
[openSSH]
	sequence    = 7000,8000:udp,9000
	seq_timeout = 5
	command     = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
	tcpflags    = syn
`)
	kd := r.p.Server.Command(t.Context(), "knockd", "-c", conf)
	out := netnstest.NewOutput()
	kd.Stdout, kd.Stderr = out, out
	if err := kd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kd.Process.Kill(); kd.Wait() })
	waitFile(t, r.dir+"/knockd.log", "listening on veth0", 5*time.Second)
	srv, cli := r.p.Server4, r.p.Client4
	r.requireClosed(cli, srv, "before the knock")
	if out, err := r.postern("knock", "-v", srv.String(), "7000", "8000:udp", "9000"); err != nil {
		t.Fatalf("postern knock: %v\n%s", err, out)
	}
	waitFile(t, r.dir+"/knockd.log", cli.String()+": openSSH: OPEN SESAME", 3*time.Second)
	r.waitOpen(cli, srv, 2*time.Second, "knockd opened the port").Close()
}

// The state engine in the running daemon: what knockd gets wrong.
func TestSequenceStateEngine(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true, extra: `
[[door]]
name = "ssh"
sequence = ["tcp/7000", "udp/8000", "tcp/9000"]
seq_timeout = "2s"
open = ["tcp/22"]
duration = "30s"
`})
	r.start()
	srv, a, b := r.p.Server4, r.p.Client4, r.p.Client4b
	seq := []knock.Hit{tcpHit(7000), udpHit(8000), tcpHit(9000)}

	t.Run("interleaved sources both succeed", func(t *testing.T) {
		for _, h := range seq {
			r.hit(a, srv, h)
			r.hit(b, srv, h)
		}
		r.out.WaitFor(t, 2*time.Second, "msg=granted language=door", "src="+a.String())
		r.out.WaitFor(t, 2*time.Second, "msg=granted language=door", "src="+b.String())
		r.waitOpen(a, srv, time.Second, "first knocker").Close()
		r.waitOpen(b, srv, time.Second, "second knocker").Close()
	})
	// From here on the client's other address knocks on IPv6 against a
	// closed port: a fresh (source, door) each time.
	srv6 := r.p.Server6
	c6 := r.p.Client6
	t.Run("out of order fails and is logged", func(t *testing.T) {
		mark := r.out.Mark()
		r.hits(c6, srv6, tcpHit(7000), tcpHit(9000), udpHit(8000))
		r.out.WaitAfter(t, mark, 2*time.Second, `reason="knock failed"`, "src="+c6.String(), "stage=1", "got=tcp/9000", "want=udp/8000")
		r.requireClosed(c6, srv6, "out-of-order sequence")
	})
	t.Run("slower than seq_timeout fails and is logged", func(t *testing.T) {
		mark := r.out.Mark()
		r.hits(c6, srv6, tcpHit(7000), udpHit(8000))
		time.Sleep(2500 * time.Millisecond) // the subject: slower than seq_timeout
		r.out.WaitAfter(t, mark, time.Second, `reason="knock timed out"`, "src="+c6.String(), "stage=2")
		// The late last hit, then a whole sequence from another address on
		// the same path: its grant is the verdict that the late hit, before
		// it, opened nothing.
		witness := netip.MustParseAddr("2001:db8::4")
		r.p.Client.IP(t, "addr", "add", witness.String()+"/64", "dev", netnstest.Interface, "nodad")
		mark = r.out.Mark()
		r.hit(c6, srv6, tcpHit(9000))
		r.hits(witness, srv6, tcpHit(7000), udpHit(8000), tcpHit(9000))
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=door", "src="+witness.String())
		if strings.Contains(r.out.String()[mark:], "msg=granted language=door src="+c6.String()) {
			t.Fatal("the last hit of a timed-out sequence opened the door")
		}
		r.requireClosed(c6, srv6, "slow sequence")
	})
	t.Run("duplicated first hit still succeeds", func(t *testing.T) {
		r.hits(c6, srv6, tcpHit(7000), tcpHit(7000), udpHit(8000), tcpHit(9000))
		r.waitOpen(c6, srv6, time.Second, "duplicated first hit").Close()
	})
	t.Run("retransmitted middle hit still succeeds", func(t *testing.T) {
		mark := r.out.Mark()
		r.hits(b, srv, tcpHit(7000), udpHit(8000), udpHit(8000), tcpHit(9000), tcpHit(9000))
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=door", "src="+b.String())
	})
	if strings.Contains(r.out.String(), "src="+r.p.Client6b.String()) {
		t.Fatal("a source that never knocked appears in the log")
	}
}

func TestICMPKnock(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true, extra: `
[[door]]
name = "ping"
sequence = ["icmp/64", "icmp/100"]
tcp_flags = ""
open = ["tcp/22"]
`})
	r.start()
	r.requireClosed(r.p.Client4, r.p.Server4, "before the knock")
	if out, err := r.postern("knock", r.p.Server4.String(), "64:icmp", "100:icmp"); err != nil {
		t.Fatalf("postern knock: %v\n%s", err, out)
	}
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after two pings").Close()
}

func TestOneTimeSequences(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true})
	seqFile := r.writeFile("ssh.seq", "# one sequence a line; a used one gets a #\n 7001,8001:udp\n 7002,8002:udp\n 7003,8003:udp\n")
	r.writeFile("postern.toml", fmt.Sprintf(`interface = %q
state_dir = %q
[[door]]
name = "ot"
one_time_sequences = %q
open = ["tcp/22"]
duration = "30s"
`, netnstest.Interface, r.dir+"/state", seqFile))
	r.start()
	srv := r.p.Server4
	knockSeq := func(seq ...string) {
		t.Helper()
		if out, err := r.postern(append([]string{"knock", srv.String()}, seq...)...); err != nil {
			t.Fatalf("postern knock: %v\n%s", err, out)
		}
	}
	// The second line is not yet valid: nothing opens. The daemon's verdict
	// comes with the next knock on the same capture path: the first line
	// is granted, once.
	mark := r.out.Mark()
	knockSeq("7002", "8002:udp")
	knockSeq("7001", "8001:udp")
	r.waitOpen(r.p.Client4, srv, time.Second, "first line").Close()
	waitFile(t, seqFile, "\n#7001,8001:udp\n", time.Second)
	r.out.WaitAfter(t, mark, time.Second, "msg=granted language=door")
	if n := strings.Count(r.out.String()[mark:], "msg=granted language=door"); n != 1 {
		t.Fatalf("%d grants for a later line before its turn and the first line; want 1", n)
	}

	// The used line never opens again, for anyone.
	r.signal(syscall.SIGTERM)
	r.p.Server.Exec(t, posternBin, "cleanup")
	r.start()
	r.requireClosed(r.p.Client4, srv, "after restart")
	// The reused line, then the current one: its grant is the daemon's
	// verdict that the reused one went through the same path first.
	mark = r.out.Mark()
	knockSeq("7001", "8001:udp")
	knockSeq("7002", "8002:udp")
	r.waitOpen(r.p.Client4, srv, time.Second, "second line after restart").Close()
	r.out.WaitAfter(t, mark, time.Second, "msg=granted language=door")
	if n := strings.Count(r.out.String()[mark:], "msg=granted language=door"); n != 1 {
		t.Fatalf("%d grants for a reused line and the current one; want 1 (a used one-time sequence opened the door)", n)
	}
	data, _ := os.ReadFile(seqFile)
	if !strings.Contains(string(data), "\n#7002,8002:udp\n 7003,8003:udp\n") {
		t.Fatalf("sequence file:\n%s", data)
	}
	// The next line works in the same run, as with knockd: capture and
	// the closed ports followed the door's new sequence.
	r.out.WaitFor(t, time.Second, "msg=granted language=door")
	if knockSet := r.p.Server.Exec(t, "nft", "list", "set", "inet", "postern", "knock"); !strings.Contains(knockSet, "udp . 8003") {
		t.Fatalf("the third line's ports are not closed:\n%s", knockSet)
	}
	mark = r.out.Mark()
	knockSeq("7003", "8003:udp")
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=door", "client=ot")
	waitFile(t, seqFile, "\n#7003,8003:udp\n", time.Second)
}

func TestRotatingSequences(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true})
	secret := r.writeFile("rot.secret", "an example secret, 32 bytes long\n")
	r.writeFile("postern.toml", fmt.Sprintf(`interface = %q
state_dir = %q
[[door]]
name = "rot"
secret_file = %q
period = "60s"
length = 4
port_range = "20000-20999"
open = ["tcp/22"]
duration = "30s"
`, netnstest.Interface, r.dir+"/state", secret))
	rot, err := client.NewRotating(secret, "60s", 4, "20000-20999", "")
	if err != nil {
		t.Fatal(err)
	}
	// Stay inside one window for the whole test.
	if left := 60 - time.Now().Unix()%60; left < 15 {
		time.Sleep(time.Duration(left+1) * time.Second)
	}
	r.start()
	w := rot.Window(time.Now())
	srv := r.p.Server4
	a, b := r.p.Client4, r.p.Client4b

	// A derived port is closed like any knock port: no RST.
	r.requireKnockPortSilent(a, srv, rot.Sequence("rot", w)[0].Num)

	// The sequence of two windows ago, then the current one, from one
	// address: the current one's grant is the daemon's verdict that the
	// stale one, sent first on the same path, opened nothing.
	mark := r.out.Mark()
	r.hits(b, srv, rot.Sequence("rot", w-2)...)
	r.hits(b, srv, rot.Sequence("rot", w)...)
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=door", "src="+b.String())
	if n := strings.Count(r.out.String()[mark:], "msg=granted language=door src="+b.String()); n != 1 {
		t.Fatalf("%d grants for the sequences of two windows ago and of now; want 1 (the stale one opened)", n)
	}
	r.requireClosed(a, srv, "the other address")

	r.hits(a, srv, rot.Sequence("rot", w-1)...)
	r.waitOpen(a, srv, time.Second, "sequence of the previous window").Close()

	mark = r.out.Mark()
	r.hits(a, srv, rot.Sequence("rot", w-1)...)
	r.out.WaitAfter(t, mark, 2*time.Second, `reason="knock refused"`, "src="+a.String(), "already used")

	// The client derives the current window's sequence itself.
	if out, err := r.postern("knock", "--door", "rot", "--secret-file", secret, "--period", "60s",
		"--length", "4", "--port-range", "20000-20999", "-v", srv.String()); err != nil {
		t.Fatalf("postern knock --door: %v\n%s", err, out)
	}
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted language=door", "src="+a.String())
}

// A stop command outlives the daemon: SIGKILL after the start command ran,
// restart before the stop is due (it runs on time) and after (at once).
func TestStopCommandAfterSIGKILL(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true})
	log := r.dir + "/commands.log"
	r.writeFile("postern.toml", fmt.Sprintf(`interface = %q
state_dir = %q
[[door]]
name = "cmd"
sequence = ["tcp/7000", "tcp/8000"]
start_command = "echo start %%IP%% >> %s"
stop_command = "echo stop %%IP%% >> %s"
cmd_timeout = "3s"
`, netnstest.Interface, r.dir+"/state", log, log))
	srv, cli := r.p.Server4, r.p.Client4
	stopLine := "stop " + cli.String()

	t.Run("restart before the stop is due", func(t *testing.T) {
		r.start()
		knocked := time.Now() // before the hits: the daemon may see the sequence complete before hits returns
		r.hits(cli, srv, tcpHit(7000), tcpHit(8000))
		waitFile(t, log, "start "+cli.String(), 2*time.Second)
		r.signal(syscall.SIGKILL)
		r.start()
		// Seen as soon as it runs: never before cmd_timeout.
		waitFile(t, log, stopLine, 5*time.Second)
		if ran := time.Since(knocked); ran < 3*time.Second {
			t.Fatalf("stop command ran %v after the knock, before cmd_timeout (3s)", ran.Round(time.Millisecond))
		}
		r.signal(syscall.SIGTERM)
	})
	t.Run("restart after the stop was due", func(t *testing.T) {
		os.Remove(log)
		r.start()
		r.hits(cli, srv, tcpHit(7000), tcpHit(8000))
		waitFile(t, log, "start "+cli.String(), 2*time.Second)
		r.signal(syscall.SIGKILL)
		time.Sleep(3500 * time.Millisecond)
		if data, _ := os.ReadFile(log); strings.Contains(string(data), stopLine) {
			t.Fatal("stop command ran while the daemon was dead")
		}
		restarted := time.Now()
		r.start()
		waitFile(t, log, stopLine, time.Second)
		r.out.WaitFor(t, time.Second, "stop command overdue after restart", "door=cmd")
		t.Logf("overdue stop ran %v after restart", time.Since(restarted).Round(time.Millisecond))
	})
}

// postern knock --door NAME reads the door from the client's client.toml.
func TestDoorProfile(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true, extra: `
[[door]]
name = "ssh"
sequence = ["udp/7500", "tcp/7600"]
open = ["tcp/22"]
`})
	profiles := r.writeFile("client.toml", fmt.Sprintf(`[[door]]
name = "office"
host = %q
sequence = ["udp/7500", "tcp/7600"]
delay = "20ms"
`, r.p.Server4))
	r.start()
	r.requireClosed(r.p.Client4, r.p.Server4, "before the knock")
	if out, err := r.postern("knock", "--config", profiles, "--door", "office"); err != nil {
		t.Fatalf("postern knock --door: %v\n%s", err, out)
	}
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after knocking the profile").Close()
}
