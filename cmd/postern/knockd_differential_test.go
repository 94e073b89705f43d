package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/port"
)

// The knockd differential test: the real knockd and postern read the same
// knockd.conf (only the folder of its files differs) and get the same hits,
// sent as Ethernet frames so that any TCP flags and any destination can be
// knocked. Each scenario knocks from its own address; a sentinel sequence
// from another address, which both daemons log as OPEN SESAME, says the
// scenario's hits have been read. The decision compared is what each
// daemon wrote to its knockd LogFile for the scenario's address (stages,
// OPEN SESAME) and what its commands recorded (%IP% substituted, stop
// commands after cmd_timeout). Disagreements not documented in
// docs/COMPATIBILITY.md fail the test.

const knockdDiffConf = `[options]
	LogFile = DIR/knockd.log
	Interface = veth0

[sentinel]
	sequence    = 65001,65002
	seq_timeout = 5
	tcpflags    = syn
	command     = true

[basic]
	sequence    = 7001,7002:udp,7003
	seq_timeout = 5
	tcpflags    = syn
	command     = echo start %IP% basic >> DIR/record

[notack]
	sequence    = 7101,7102
	tcpflags    = syn,!ack
	command     = echo start %IP% notack >> DIR/record

[finonly]
	sequence    = 7201,7202
	tcpflags    = fin,!syn
	command     = echo start %IP% finonly >> DIR/record

[anyflags]
	sequence    = 7301,7302
	command     = echo start %IP% anyflags >> DIR/record

[elsewhere]
	sequence    = 7401,7402
	target      = 198.18.0.77
	command     = echo start %IP% elsewhere >> DIR/record

[here]
	sequence    = 7451,7452
	target      = 198.18.0.1
	command     = echo start %IP% here >> DIR/record

[startstop]
	sequence      = 7501:udp,7502
	start_command = echo start %IP% startstop >> DIR/record
	cmd_timeout   = 1
	stop_command  = echo stop %IP% startstop >> DIR/record

[onetime]
	one_time_sequences = DIR/onetime.seq
	seq_timeout        = 5
	command            = echo start %IP% onetime >> DIR/record

[shareA]
	sequence    = 7701,7702
	command     = echo start %IP% shareA >> DIR/record

[shareB]
	sequence    = 7701,7703
	command     = echo start %IP% shareB >> DIR/record

[short]
	sequence    = 7801,7802
	seq_timeout = 1
	command     = echo start %IP% short >> DIR/record
`

// The one-time sequences: one a line, each with the leading space knockd
// overwrites with '#' when the line is used.
const knockdDiffOneTime = " 7601,7602:udp\n 7603,7604\n 7605:udp,7606\n 7607,7608\n"

type kdScenario struct {
	name string
	hits string // space separated: PORT[:udp][/FLAGS][@DST], FLAGS of F S R P A U; "pause" waits 2.1 s
	wait string // a record line to wait for (a stop command), if any
}

var kdScenarios = []kdScenario{
	{name: "basic: in order", hits: "7001 7002:udp 7003"},
	{name: "basic: tcp where udp is wanted", hits: "7001 7002 7003"},
	{name: "basic: wrong order", hits: "7002:udp 7001 7003"},
	{name: "basic: incomplete", hits: "7001 7002:udp"},
	{name: "basic: first hit twice", hits: "7001 7001 7002:udp 7003"},
	{name: "basic: unrelated port between", hits: "7001 9999 7002:udp 7003"},
	{name: "basic: another door's port between", hits: "7001 7801 7002:udp 7003"},
	{name: "basic: twice in a row", hits: "7001 7002:udp 7003 7001 7002:udp 7003"},
	{name: "basic: SYN+ACK hits", hits: "7001/SA 7002:udp 7003/SA"},
	{name: "notack: SYN", hits: "7101 7102"},
	{name: "notack: SYN+ACK", hits: "7101/SA 7102/SA"},
	{name: "notack: SYN+ACK between is ignored", hits: "7101 7102/SA 7102"},
	{name: "finonly: FIN", hits: "7201/F 7202/F"},
	{name: "finonly: SYN", hits: "7201 7202"},
	{name: "finonly: FIN+SYN", hits: "7201/FS 7202/FS"},
	{name: "anyflags: RST then SYN+ACK", hits: "7301/R 7302/SA"},
	{name: "anyflags: udp", hits: "7301:udp 7302:udp"},
	{name: "target: to the target address", hits: "7401@198.18.0.77 7402@198.18.0.77"},
	{name: "target: to the host's address", hits: "7401 7402"},
	{name: "target: the host's own address", hits: "7451 7452"},
	{name: "start/stop: cmd_timeout", hits: "7501:udp 7502", wait: "stop"},
	{name: "start/stop: again while the stop is pending", hits: "7501:udp 7502 7501:udp 7502", wait: "stop"},
	{name: "one-time: the second line first", hits: "7603 7604"},
	{name: "one-time: the first line", hits: "7601 7602:udp"},
	{name: "one-time: the first line again", hits: "7601 7602:udp"},
	{name: "one-time: the second line", hits: "7603 7604"},
	{name: "one-time: the third line", hits: "7605:udp 7606"},
	{name: "one-time: the third line again", hits: "7605:udp 7606"},
	{name: "shared first port: A", hits: "7701 7702"},
	{name: "shared first port: B", hits: "7701 7703"},
	{name: "seq_timeout: too slow", hits: "7801 pause 7802"},
	{name: "seq_timeout: in time", hits: "7801 7802"},
	// Last: knockd 0.8 dies of a double free when the file runs out.
	{name: "one-time: the last line", hits: "7607 7608"},
}

// kdDaemon is one daemon under test, seen through its files.
type kdDaemon struct {
	dir    string // its LogFile, record and one-time file
	frame  func(src, dst netip.Addr, h knock.Hit, flags uint8)
	stop   func()
	exited <-chan struct{} // knockd's: closed when it exits (postern's exiting fails the test)
}

func (d *kdDaemon) read(name string) string {
	data, _ := os.ReadFile(filepath.Join(d.dir, name))
	return string(data)
}

// logLines returns the knockd LogFile's lines about src, without the
// timestamp.
func (d *kdDaemon) logLines(src string) []string {
	var out []string
	for _, l := range strings.Split(d.read("knockd.log"), "\n") {
		if _, rest, ok := strings.Cut(l, "] "); ok && strings.HasPrefix(rest, src+": ") {
			out = append(out, strings.TrimPrefix(rest, src+": "))
		}
	}
	return out
}

func (d *kdDaemon) records(src string) []string {
	var out []string
	for _, l := range strings.Split(d.read("record"), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[1] == src {
			out = append(out, f[0]+" "+f[2])
		}
	}
	slices.Sort(out)
	return out
}

var sentinelSrc = netip.MustParseAddr("198.18.0.250")

// decision sends a scenario's hits from src, then the sentinel's, and
// returns what the daemon made of them.
func (d *kdDaemon) decision(t *testing.T, i int, sc kdScenario, src, srv netip.Addr) string {
	t.Helper()
	for _, h := range strings.Fields(sc.hits) {
		if h == "pause" {
			time.Sleep(2100 * time.Millisecond) // the subject: seq_timeout is 1 s
			continue
		}
		hit, flags, dst := parseKdHit(t, h, srv)
		d.frame(src, dst, hit, flags)
	}
	d.frame(sentinelSrc, srv, tcpHit(65001), 0x02)
	d.frame(sentinelSrc, srv, tcpHit(65002), 0x02)
	deadline := time.Now().Add(5 * time.Second)
	crashed := false
	for countOf(d.logLines(sentinelSrc.String()), "sentinel: OPEN SESAME") < i+1 && !crashed {
		select {
		case <-d.exited:
			crashed = true
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no sentinel in %s/knockd.log:\n%s", sc.name, d.dir, d.read("knockd.log"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Commands run apart from the daemon: wait for one record per OPEN
	// SESAME (and the stop command the scenario waits for).
	want := countOf(d.logLines(src.String()), "OPEN SESAME")
	if sc.wait != "" {
		want *= 2
	}
	for deadline = time.Now().Add(5 * time.Second); len(d.records(src.String())) < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	var out []string
	for _, l := range d.logLines(src.String()) {
		if strings.Contains(l, ": Stage ") || strings.HasSuffix(l, ": OPEN SESAME") {
			out = append(out, l)
		}
	}
	out = append(out, d.records(src.String())...)
	if crashed {
		out = append(out, "the daemon died")
	}
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, "; ")
}

func countOf(lines []string, suffix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasSuffix(l, suffix) {
			n++
		}
	}
	return n
}

func parseKdHit(t *testing.T, s string, srv netip.Addr) (knock.Hit, uint8, netip.Addr) {
	t.Helper()
	dst := srv
	if p, at, ok := strings.Cut(s, "@"); ok {
		s, dst = p, netip.MustParseAddr(at)
	}
	flags := uint8(0x02)
	if p, f, ok := strings.Cut(s, "/"); ok {
		s, flags = p, 0
		for _, c := range f {
			flags |= map[rune]uint8{'F': 0x01, 'S': 0x02, 'R': 0x04, 'P': 0x08, 'A': 0x10, 'U': 0x20}[c]
		}
	}
	proto := port.TCP
	if p, ok := strings.CutSuffix(s, ":udp"); ok {
		s, proto = p, port.UDP
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		t.Fatalf("hit %q: %v", s, err)
	}
	return knock.Hit{Proto: proto, Num: uint16(n)}, flags, dst
}

// rawLink opens an AF_PACKET socket on the client's end of the link and
// returns it with the server's and the client's MAC addresses, for tests
// that write whole Ethernet frames.
func rawLink(t testing.TB, p *netnstest.Pair) (conn *packet.Conn, srvMAC, cliMAC net.HardwareAddr) {
	t.Helper()
	p.Server.Do(func() error {
		ifi, err := net.InterfaceByName(netnstest.Interface)
		srvMAC = ifi.HardwareAddr
		return err
	})
	if err := p.Client.Do(func() error {
		ifi, err := net.InterfaceByName(netnstest.Interface)
		if err != nil {
			return err
		}
		cliMAC = ifi.HardwareAddr
		conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, srvMAC, cliMAC
}

// frameSender sends knock hits as Ethernet frames from the client
// namespace to the server's MAC address.
func frameSender(t *testing.T, p *netnstest.Pair) func(src, dst netip.Addr, h knock.Hit, flags uint8) {
	conn, srvMAC, cliMAC := rawLink(t, p)
	return func(src, dst netip.Addr, h knock.Hit, flags uint8) {
		if _, err := conn.WriteTo(hit4Frame(srvMAC, cliMAC, src, dst, h, flags), &packet.Addr{HardwareAddr: srvMAC}); err != nil {
			t.Fatal(err)
		}
	}
}

// knockdDiffDir writes the knockd.conf and the one-time file into a folder
// of their own.
func knockdDiffDir(t *testing.T, dir string) string {
	os.MkdirAll(dir, 0o700)
	conf := filepath.Join(dir, "knockd.conf")
	os.WriteFile(conf, []byte(strings.ReplaceAll(knockdDiffConf, "DIR", dir)), 0o600)
	os.WriteFile(filepath.Join(dir, "onetime.seq"), []byte(knockdDiffOneTime), 0o600)
	return conf
}

func startKnockd(t *testing.T, dir string) *kdDaemon {
	p := netnstest.NewPair(t)
	conf := knockdDiffDir(t, dir)
	kd := p.Server.Command(t.Context(), "knockd", "-c", conf)
	out := netnstest.NewOutput()
	kd.Stdout, kd.Stderr = out, out
	if err := kd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { kd.Wait(); close(exited) }()
	d := &kdDaemon{dir: dir, frame: frameSender(t, p), exited: exited, stop: func() { kd.Process.Signal(syscall.SIGTERM); <-exited }}
	t.Cleanup(func() {
		kd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("knockd output:\n%s", out)
		}
	})
	waitFile(t, filepath.Join(dir, "knockd.log"), "listening on veth0", 5*time.Second)
	return d
}

func startPosternKnockd(t *testing.T, dir string) *kdDaemon {
	r := newRig(t, rigOptions{noSPA: true})
	conf := knockdDiffDir(t, dir)
	r.writeFile("postern.toml", fmt.Sprintf("state_dir = %q\nknockd_file = %q\n", r.dir+"/state", conf))
	r.start()
	waitFile(t, filepath.Join(dir, "knockd.log"), "listening on veth0", 5*time.Second)
	return &kdDaemon{dir: dir, frame: frameSender(t, r.p), stop: func() { r.signal(syscall.SIGTERM) }}
}

func TestKnockdDifferential(t *testing.T) {
	netnstest.Require(t, "knockd")
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	kd, ps := startKnockd(t, filepath.Join(dir, "knockd")), startPosternKnockd(t, filepath.Join(dir, "postern"))
	type row struct{ name, knockd, postern string }
	var rows []row
	for i, sc := range kdScenarios {
		src := netip.AddrFrom4([4]byte{198, 18, 0, byte(20 + i)})
		srv := netip.MustParseAddr("198.18.0.1")
		rows = append(rows, row{sc.name, kd.decision(t, i, sc, src, srv), ps.decision(t, i, sc, src, srv)})
	}
	rows = append(rows, row{"one-time: the file afterwards", strconv.Quote(kd.read("onetime.seq")), strconv.Quote(ps.read("onetime.seq"))})
	kd.stop()
	ps.stop()
	var table []compatRow
	for _, r := range rows {
		table = append(table, compatRow{key: "knockd: " + r.name, cells: []string{r.name, r.knockd, r.postern}})
	}
	compareAndTabulate(t, "knockd", "| scenario | knockd 0.8 | postern | |\n|---|---|---|---|\n", table)
}
