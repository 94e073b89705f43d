package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/command"
	"github.com/postern/postern/config"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// harness runs a Server on an in-memory capture source and the in-memory
// firewall, as the daemon runs on real ones.
type harness struct {
	s    *Server
	src  *capture.Memory
	fw   *firewall.Memory
	logs *netnstest.Output
}

func runPipeline(t *testing.T, cfg *config.Config, level slog.Level) *harness {
	t.Helper()
	p := &harness{src: capture.NewMemory(), fw: firewall.NewMemory(), logs: netnstest.NewOutput()}
	var err error
	p.s, err = New(cfg, firewall.NewKeeper(p.fw, nil), slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: level})))
	if err != nil {
		t.Fatal(err)
	}
	p.s.Source = p.src
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	p.logs.WaitFor(t, 2*time.Second, "msg=ready")
	return p
}

func (p *harness) send(t *testing.T, f capture.Frame) {
	t.Helper()
	if err := p.src.Send(f); err != nil {
		t.Fatal(err)
	}
}

// The pipeline without a kernel: frames in through the capture source,
// grants into the in-memory backend, one log line and one counter per
// decision.
func TestPipelineSPA(t *testing.T) {
	dir := t.TempDir()
	server, _ := spa.GenerateServerKey()
	alice, _ := spa.GenerateClientKey()
	keyFile := filepath.Join(dir, "server.key")
	os.WriteFile(keyFile, []byte(server.Encode()), 0o600)
	cfg := &config.Config{
		Interface: "any", Capture: "afpacket", PrivateKeyFile: keyFile, StateDir: filepath.Join(dir, "state"),
		SPA:      config.SPA{Port: 62201, MaxSkew: 30 * time.Second},
		Firewall: config.Firewall{Backend: "none"},
		Clients: []config.Client{{Name: "alice", PublicKey: alice.Public(), Allow: []port.Spec{{Proto: port.TCP, Num: 22}},
			MaxDuration: time.Minute, DefaultDuration: 10 * time.Second}},
	}
	p := runPipeline(t, cfg, slog.LevelInfo)
	src := netip.MustParseAddr("198.18.0.2")
	frame := func(k spa.Knock) capture.Frame {
		pkt, err := spa.Seal(alice, server.Public(), k)
		if err != nil {
			t.Fatal(err)
		}
		return capture.Frame{Src: src, Dst: netip.MustParseAddr("198.18.0.1"), Proto: capture.ProtoUDP,
			DstPort: 62201, Payload: pkt, Time: time.Now()}
	}
	ssh := []port.Spec{{Proto: port.TCP, Num: 22}}

	p.send(t, frame(spa.Knock{Time: time.Now(), Allow: src, Ports: ssh}))
	// Knocks are verified on workers: wait for the verdict.
	p.logs.WaitFor(t, 2*time.Second, "msg=granted language=spa")
	gs, _ := p.fw.List()
	if len(gs) != 1 || gs[0].Addr != src || gs[0].Name != "spa:alice" || gs[0].Timeout > 10*time.Second || gs[0].Timeout < 9*time.Second {
		t.Fatalf("grants after a valid knock: %v\n%s", gs, p.logs)
	}
	if rs := p.fw.Rules(); len(rs.Protected) != 1 || len(rs.Knock) != 1 {
		t.Fatalf("rules installed: %+v", rs)
	}
	p.send(t, frame(spa.Knock{Time: time.Now(), Allow: src, Ports: []port.Spec{{Proto: port.TCP, Num: 23}}}))
	if err := p.src.SendPacket([]byte{0x45, 0}); err != nil {
		t.Fatal(err)
	}
	p.logs.WaitFor(t, 2*time.Second, `reason="port not allowed"`)
	for _, want := range []string{"msg=granted language=spa src=198.18.0.2 client=alice allow=198.18.0.2 ports=tcp/22",
		`msg=refused language=spa src=198.18.0.2 reason="port not allowed" client=alice`,
		`msg=refused language=capture`, `reason="malformed packet"`} {
		if !strings.Contains(p.logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, p.logs)
		}
	}
	m := p.s.Metrics()
	if m.Get(policy.SPA, mGranted) != 1 || m.Get(policy.SPA, "port not allowed") != 1 || m.Get("capture", mMalformed) != 1 {
		t.Fatal("counters wrong")
	}
	var b strings.Builder
	m.WriteTo(&b)
	if !strings.Contains(b.String(), `postern_knocks_total{language="spa",outcome="granted"} 1`) {
		t.Fatalf("metrics:\n%s", b.String())
	}
}

func TestLogLimiter(t *testing.T) {
	var l logLimiter
	now := time.Unix(0, 0)
	logged := 0
	for range 1000 {
		if ok, _ := l.allow(outcome{policy.SPA, "bad mac1"}, now); ok {
			logged++
		}
	}
	if logged != logBurst {
		t.Fatalf("logged %d lines of a burst of 1000, want %d", logged, logBurst)
	}
	if ok, _ := l.allow(outcome{policy.SPA, "bad length"}, now); !ok {
		t.Fatal("one flooding reason silenced another")
	}
	ok, suppressed := l.allow(outcome{policy.SPA, "bad mac1"}, now.Add(time.Second))
	if !ok || suppressed != 1000-logBurst {
		t.Fatalf("after a second: ok=%v suppressed=%d", ok, suppressed)
	}
}

func TestRefusesReadableKey(t *testing.T) {
	dir := t.TempDir()
	server, _ := spa.GenerateServerKey()
	keyFile := filepath.Join(dir, "server.key")
	os.WriteFile(keyFile, []byte(server.Encode()), 0o640)
	alice, _ := spa.GenerateClientKey()
	_, err := New(&config.Config{PrivateKeyFile: keyFile, StateDir: dir,
		Clients: []config.Client{{Name: "alice", PublicKey: alice.Public()}}}, firewall.NewKeeper(firewall.NewMemory(), nil), slog.Default())
	if err == nil || !strings.Contains(err.Error(), "0640") {
		t.Fatalf("New with a group-readable key: %v", err)
	}
}

// Doors without a kernel: hits in through the capture source, a grant in
// the in-memory backend and a real start command through /bin/sh.
func TestPipelineDoors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	ssh := port.Spec{Proto: port.TCP, Num: 22}
	d := &knock.Door{Name: "ssh", Sequence: []knock.Hit{{Proto: port.TCP, Num: 7000}, {Proto: port.UDP, Num: 8000}, {Proto: knock.ICMP, Num: 32}},
		SeqTimeout: 5 * time.Second, Flags: knock.Flags{Set: knock.SYN, Clear: knock.ACK},
		Open: []port.Spec{ssh}, Duration: 10 * time.Second, StartCommand: "echo %IP% > " + out}
	cfg := &config.Config{Interface: "any", Capture: "afpacket", StateDir: filepath.Join(dir, "state"),
		Doors: []*knock.Door{d}, MaxTracked: 100}
	rules, matches := Rules(cfg)
	if len(rules.Knock) != 2 || len(rules.Protected) != 1 || len(matches) != 3 {
		t.Fatalf("rules %+v, matches %+v", rules, matches)
	}
	p := runPipeline(t, cfg, slog.LevelInfo)
	src := netip.MustParseAddr("198.18.0.2")
	now := time.Now()
	frames := []capture.Frame{
		{Proto: capture.ProtoTCP, DstPort: 7000, TCPFlags: knock.SYN},
		{Proto: capture.ProtoUDP, DstPort: 8000},
		{Proto: capture.ProtoICMP, ICMPType: 8, Payload: make([]byte, 32)},
	}
	for _, f := range frames {
		f.Src, f.Dst, f.Time = src, netip.MustParseAddr("198.18.0.1"), now
		p.send(t, f)
	}
	gs, _ := p.fw.List()
	if len(gs) != 1 || gs[0].Addr != src || gs[0].Port != ssh || gs[0].Name != "door:ssh" {
		t.Fatalf("grants %v\n%s", gs, p.logs)
	}
	p.logs.WaitFor(t, 2*time.Second, "msg=granted language=door src=198.18.0.2 client=ssh allow=198.18.0.2 ports=tcp/22 duration=10s commands=1")
	deadline := time.Now().Add(2 * time.Second)
	for {
		if b, _ := os.ReadFile(out); string(b) == "198.18.0.2\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("start command did not run\n%s", p.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Out of order: logged with source and stage, counted.
	p.send(t, capture.Frame{Src: src, Proto: capture.ProtoTCP, DstPort: 7000, TCPFlags: knock.SYN, Time: now})
	p.send(t, capture.Frame{Src: src, Proto: capture.ProtoICMP, ICMPType: 8, Payload: make([]byte, 32), Time: now})
	if p.s.Metrics().Get(policy.Door, knock.ReasonFailed) != 1 ||
		!strings.Contains(p.logs.String(), `msg=refused language=door src=198.18.0.2 reason="knock failed" client=ssh stage=1 got=icmp/32 want=udp/8000`) {
		t.Fatalf("failure not logged:\n%s", p.logs)
	}
}

func TestKnockdLogFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "knockd.log")
	cfg := &config.Config{Knockd: &knock.KnockdConf{LogFile: path}}
	var stderr bytes.Buffer
	log, err := NewLogger(cfg, &stderr, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("ready", "interface", "veth0")
	log.Debug("knock progress", "language", "door", "src", "198.18.0.2", "client", "openSSH", "stage", 1)
	log.Info("granted", "language", "door", "src", "198.18.0.2", "client", "openSSH")
	log.Info("granted", "language", "spa", "src", "198.18.0.2", "client", "alice")
	// logrotate moves the file away and sends SIGHUP: the next line goes
	// to a new file under the old name.
	os.Rename(path, path+".1")
	if err := log.Reopen(); err != nil {
		t.Fatal(err)
	}
	log.Info("start command ran", "door", "openSSH", "src", "198.18.0.2", "command", "iptables -A INPUT -s 198.18.0.2 -j ACCEPT")
	log.Close()
	rotated, _ := os.ReadFile(path + ".1")
	current, _ := os.ReadFile(path)
	data := append(rotated, current...)
	if !strings.Contains(string(current), "running command") || strings.Contains(string(rotated), "running command") {
		t.Fatalf("after reopen: rotated\n%s\ncurrent\n%s", rotated, current)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	want := []string{"starting up, listening on veth0", "198.18.0.2: openSSH: Stage 1", "198.18.0.2: openSSH: OPEN SESAME",
		"openSSH: running command: iptables -A INPUT -s 198.18.0.2 -j ACCEPT"}
	if len(lines) != len(want) {
		t.Fatalf("log file:\n%s", data)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], "[") || !strings.HasSuffix(lines[i], "] "+w) {
			t.Errorf("line %d = %q, want [stamp] %s", i, lines[i], w)
		}
	}
	if strings.Contains(stderr.String(), "Stage") || strings.Contains(stderr.String(), "knock progress") {
		t.Error("debug line on stderr at info level")
	}
}

// SPA and fwknop may share a port: it is captured (and, with AF_PACKET,
// closed) once, in either capture mode.
func TestSharedKnockPort(t *testing.T) {
	dir := t.TempDir()
	server, _ := spa.GenerateServerKey()
	alice, _ := spa.GenerateClientKey()
	keyFile := filepath.Join(dir, "server.key")
	os.WriteFile(keyFile, []byte(server.Encode()), 0o600)
	for _, mode := range []string{"afpacket", "udp"} {
		cfg := &config.Config{Interface: "any", Capture: mode, PrivateKeyFile: keyFile, StateDir: filepath.Join(dir, mode),
			SPA:     config.SPA{Port: 62201, MaxSkew: 30 * time.Second},
			Clients: []config.Client{{Name: "alice", PublicKey: alice.Public(), Allow: []port.Spec{{Proto: port.TCP, Num: 22}}}},
			Fwknop:  &config.Fwknop{Port: 62201, MaxPacketAge: time.Minute},
		}
		if _, err := New(cfg, firewall.NewKeeper(firewall.NewMemory(), nil), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			t.Fatal(err)
		}
		rules, matches := Rules(cfg)
		wantKnock := map[string]int{"afpacket": 1, "udp": 0}[mode]
		if len(matches) != 1 || len(rules.Knock) != wantKnock {
			t.Fatalf("%s: matches %v, knock %v", mode, matches, rules.Knock)
		}
	}
}

// A flood of first hits from spoofed sources into a full table — insert,
// evict the oldest, two events — allocates nothing once warm: the counters
// count, the log limiter drops the lines, and no argument is built for a
// line that is not written.
func TestFloodHitAllocatesNothing(t *testing.T) {
	d := &knock.Door{Name: "ssh", Sequence: []knock.Hit{{Proto: port.TCP, Num: 7000}, {Proto: port.TCP, Num: 8000}},
		SeqTimeout: time.Minute, Open: []port.Spec{{Proto: port.TCP, Num: 22}}, Duration: time.Second}
	cfg := &config.Config{Interface: "any", Capture: "afpacket", StateDir: t.TempDir(), Doors: []*knock.Door{d}, MaxTracked: 64}
	s, err := New(cfg, firewall.NewKeeper(firewall.NewMemory(), nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f := capture.Frame{Dst: netip.MustParseAddr("2001:db8::1"), Proto: capture.ProtoTCP, DstPort: 7000, TCPFlags: knock.SYN, Time: time.Now()}
	var a [16]byte
	a[0], a[1] = 0x20, 0x01
	i := 0
	hit := func() {
		i++
		a[12], a[13], a[14], a[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		f.Src = netip.AddrFrom16(a)
		s.handle(&f, nil)
	}
	for range 1000 { // fill the table and use up the log burst
		hit()
	}
	if n := testing.AllocsPerRun(1000, hit); n != 0 {
		t.Fatalf("%v allocations per flooding hit", n)
	}
	if s.Metrics().Get(policy.Door, knock.ReasonEvicted) < 1000 {
		t.Fatalf("evictions counted: %d", s.Metrics().Get(policy.Door, knock.ReasonEvicted))
	}
}

// Text from packets reaches the knockd LogFile and syslog escaped: a
// newline cannot forge a line, a terminal escape cannot reach a terminal.
func TestLogLinesEscaped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "knockd.log")
	log, err := NewLogger(&config.Config{Knockd: &knock.KnockdConf{LogFile: path}}, io.Discard, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log.Warn("refused", "language", "fwknop", "src", "198.18.0.2", "reason", "x", "user", "eve")
	log.Info("start command ran", "door", "openSSH", "command", "evil\n[2026-01-01 00:00] 198.18.0.9: openSSH: OPEN SESAME\x1b[2J")
	log.Close()
	data, _ := os.ReadFile(path)
	if strings.Count(string(data), "\n") != 1 || strings.Contains(string(data), "\x1b") || strings.Contains(string(data), "refused") {
		t.Fatalf("log file (knockd's lines only, escaped):\n%q", data)
	}
	if !strings.Contains(string(data), `running command: evil\n[2026-01-01`) {
		t.Fatalf("newline not escaped visibly: %q", data)
	}
}

// log_format = "json" writes one object a line; under journald (stderr is
// the JOURNAL_STREAM) each line starts with its syslog priority.
func TestLogFormats(t *testing.T) {
	var buf bytes.Buffer
	logs, err := NewLogger(&config.Config{LogFormat: "json"}, &buf, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	logs.Warn("refused", "language", "spa", "src", "198.18.0.2", "reason", "bad mac1")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "refused" || rec["src"] != "198.18.0.2" ||
		rec["reason"] != "bad mac1" || rec["level"] != "WARN" {
		t.Fatalf("json line %q: %v", buf.String(), err)
	}
	// Durations as the text lines and the configuration write them.
	buf.Reset()
	logs.Info("granted", "duration", 30*time.Second)
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["duration"] != "30s" {
		t.Fatalf("json duration %q: %v", buf.String(), err)
	}

	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	syscall.Fstat(int(f.Fd()), &st)
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	logs, err = NewLogger(&config.Config{LogFormat: "text"}, f, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	logs.Warn("refused", "src", "198.18.0.2", "reason", "replay")
	logs.Error("grant failed", "err", "x")
	logs.Info("granted", "src", "198.18.0.2")
	data, _ := os.ReadFile(f.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "<4>level=WARN msg=refused") || !strings.HasPrefix(lines[1], "<3>") ||
		!strings.HasPrefix(lines[2], "<6>") {
		t.Fatalf("journal lines:\n%s", data)
	}
}

// With a token, the metrics endpoint answers only requests that carry it.
func TestMetricsBearerToken(t *testing.T) {
	m := newMetrics(nil)
	srv := httptest.NewServer(m.handler("0123456789abcdef"))
	defer srv.Close()
	get := func(auth string) int {
		req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		auth string
		want int
	}{{"", 401}, {"Bearer wrong", 401}, {"Bearer 0123456789abcdef", 200}, {"0123456789abcdef", 401}} {
		if got := get(c.auth); got != c.want {
			t.Errorf("Authorization %q: %d, want %d", c.auth, got, c.want)
		}
	}
}

// The knockd LogFile's lines come from the daemon's own log messages: the
// messages the command runner and the server really emit are the ones the
// LogFile turns into knockd's lines (a renamed message would silently
// empty that file).
func TestKnockdLogVocabulary(t *testing.T) {
	buf := netnstest.NewOutput()
	h := &lineHandler{mu: &sync.Mutex{}, w: buf}
	log := slog.New(h)
	r, err := command.Open(filepath.Join(t.TempDir(), "pending"), log)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run("openSSH", netip.MustParseAddr("198.18.0.2"), "true", "", 0); err != nil {
		t.Fatal(err)
	}
	r.Close() // waits for the command
	log.Info(MsgReady, "interface", "veth0")
	s := &Server{log: log}
	v := &policy.Verdict{Language: policy.Door, Src: netip.MustParseAddr("198.18.0.2"), Client: "openSSH", Note: knock.NoteProgress}
	v.Add(slog.Int("stage", 1))
	s.note(v)
	log.Info(MsgGranted, "language", policy.Door, "src", "198.18.0.2", "client", "openSSH")
	log.Info(MsgGranted, "language", policy.SPA, "src", "198.18.0.2", "client", "alice") // not knockd's
	log.Info(MsgStopped)
	for _, want := range []string{"openSSH: running command: true", "starting up, listening on veth0",
		"198.18.0.2: openSSH: Stage 1", "198.18.0.2: openSSH: OPEN SESAME", "shutting down"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the knockd LogFile lacks %q:\n%s", want, buf.String())
		}
	}
	if strings.Contains(buf.String(), "alice") {
		t.Errorf("a postern SPA grant reached the knockd LogFile:\n%s", buf.String())
	}
}
