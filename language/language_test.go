package language

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/command"
	"github.com/postern/postern/config"
	"github.com/postern/postern/covert"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/replay"
	"github.com/postern/postern/spa"
)

// memState is a State over a temporary directory, for the contract.
type memState struct {
	dir string
	mu  sync.Mutex
	ts  map[string]*spa.Timestamps
}

func (m *memState) Timestamps(name string) (replay.Store, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ts[name] == nil {
		t, err := spa.LoadTimestamps(filepath.Join(m.dir, name))
		if err != nil {
			return nil, err
		}
		m.ts[name] = t
	}
	return m.ts[name], nil
}

func (m *memState) ReplayCache(name string, keep time.Duration, max int) (*fko.ReplayCache, error) {
	return fko.OpenReplayCache(filepath.Join(m.dir, name), keep, max)
}

func (m *memState) Runner() (*command.Runner, error) {
	return nil, fmt.Errorf("no commands in the contract")
}

var (
	server4 = netip.MustParseAddr("198.18.0.1")
	client4 = netip.MustParseAddr("198.18.0.2")
	ssh22   = port.Spec{Proto: port.TCP, Num: 22}
)

// contractCase is one language's fixture: its configuration and what it
// hears.
type contractCase struct {
	name policy.Language
	// toml is the configuration; DIR is the test's folder.
	toml string
	// knock returns the frames of one valid knock made now (a fresh one
	// each call), junk a frame that is no knock.
	knock func(t *testing.T, dir string, now time.Time) []*capture.Frame
	junk  *capture.Frame
	// replay: whether a second copy of a knock is refused (sequences of
	// plain doors may be repeated by design).
	replay bool
}

func udpFrame(dport uint16, payload []byte, now time.Time) *capture.Frame {
	return &capture.Frame{Proto: capture.ProtoUDP, Src: client4, Dst: server4, SrcPort: 40000, DstPort: dport, Payload: payload, Time: now}
}

func contractCases(t *testing.T, dir string) []contractCase {
	server, _ := spa.GenerateServerKey()
	client, _ := spa.GenerateClientKey()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	serverKey := write("server.key", server.Encode()+"\n")
	secret := write("alice.covert", "a secret of sixteen+ bytes\n")
	access := write("access.conf", "SOURCE ANY\nKEY_BASE64 abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4=\n"+
		"HMAC_KEY_BASE64 EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig==\n"+
		"OPEN_PORTS tcp/22\nFW_ACCESS_TIMEOUT 30\n")
	fkoKeys := &fko.Keys{Key: mustB64("abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4="),
		HMACKey: mustB64("EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig=="), HMACType: fko.SHA256}
	sh := covert.Shape{MSS: 1460, Window: 64240, WScale: 7, SACK: true, TTL: 64}
	covertKeys, _ := covert.DeriveKeys([]byte("a secret of sixteen+ bytes"), "ssh")
	return []contractCase{
		{name: policy.SPA, replay: true,
			toml: fmt.Sprintf("private_key_file = %q\n[[client]]\nname = \"alice\"\npublic_key = %q\nallow = [\"tcp/22\"]\n", serverKey, client.Public()),
			knock: func(t *testing.T, _ string, now time.Time) []*capture.Frame {
				pkt, err := spa.Seal(client, server.Public(), spa.Knock{Time: now, Allow: client4, Ports: []port.Spec{ssh22}})
				if err != nil {
					t.Fatal(err)
				}
				return []*capture.Frame{udpFrame(62201, pkt, now)}
			},
			junk: udpFrame(62201, make([]byte, spa.PacketSize), time.Now())},
		{name: policy.Fwknop, replay: true,
			toml: fmt.Sprintf("[fwknop]\naccess_file = %q\n", access),
			knock: func(t *testing.T, _ string, now time.Time) []*capture.Frame {
				m := &fko.Message{User: "alice", Timestamp: now.Unix(), Type: fko.AccessMsg, Message: client4.String() + ",tcp/22"}
				m.Rand, _ = fko.NewRand()
				pt, _ := m.Encode()
				wire, err := fkoKeys.Seal(pt)
				if err != nil {
					t.Fatal(err)
				}
				return []*capture.Frame{udpFrame(62201, []byte(wire), now)}
			},
			junk: udpFrame(62201, []byte("not a knock at all, not even base64 !!"), time.Now())},
		{name: policy.Covert, replay: true,
			toml: fmt.Sprintf("[[covert]]\nname = \"ssh\"\nport = 4444\n[[covert.client]]\nname = \"alice\"\nsecret_file = %q\nallow = [\"tcp/22\"]\n", secret),
			knock: func(t *testing.T, _ string, now time.Time) []*capture.Frame {
				msg, err := covertKeys.Seal(covert.Request{Port: ssh22, Time: now}, covert.Binding{Src: client4, Dst: server4, DstPort: 4444})
				if err != nil {
					t.Fatal(err)
				}
				var out []*capture.Frame
				for i, c := range covert.Split(msg) {
					f := &capture.Frame{}
					if err := capture.Parse(covert.SYN{Src: client4, Dst: server4, SrcPort: 40000 + uint16(i), DstPort: 4444, Carrier: c}.Build(sh), f); err != nil {
						t.Fatal(err)
					}
					f.Time = now
					out = append(out, f)
				}
				return out
			},
			junk: &capture.Frame{Proto: capture.ProtoTCP, Src: client4, Dst: server4, DstPort: 4444, TCPFlags: 0x10, Time: time.Now()}},
		{name: policy.Door,
			toml: "[[door]]\nname = \"ssh\"\nsequence = [\"tcp/7000\", \"tcp/8000\"]\nopen = [\"tcp/22\"]\n",
			knock: func(t *testing.T, _ string, now time.Time) []*capture.Frame {
				var out []*capture.Frame
				for _, p := range []uint16{7000, 8000} {
					out = append(out, &capture.Frame{Proto: capture.ProtoTCP, Src: client4, Dst: server4, SrcPort: 40000, DstPort: p, TCPFlags: 0x02, Time: now})
				}
				return out
			},
			junk: &capture.Frame{Proto: capture.ProtoTCP, Src: client4, Dst: server4, DstPort: 9999, TCPFlags: 0x02, Time: time.Now()}},
	}
}

func mustB64(s string) []byte {
	b, err := fkoB64(s)
	if err != nil {
		panic(err)
	}
	return b
}

// The contract, for every language alike: routes it from the
// configuration alone; junk is refused with a counted reason (or ignored)
// and allocates nothing; a valid knock yields exactly one request for its
// port; a replay is refused with a counted reason; after Close returns,
// no verdict comes.
func TestContract(t *testing.T) {
	for _, c := range contractCases(t, t.TempDir()) {
		t.Run(string(c.name), func(t *testing.T) {
			dir := t.TempDir()
			cfg, err := config.Parse(filepath.Join(dir, "postern.toml"), []byte(fmt.Sprintf("interface = \"veth0\"\nstate_dir = %q\n", dir)+c.toml))
			if err != nil {
				t.Fatal(err)
			}
			specs := Enabled(cfg)
			if len(specs) != 1 || specs[0].Name != c.name {
				t.Fatalf("enabled: %v", specs)
			}
			r := specs[0].Routes(cfg)
			if len(r.Capture) == 0 || len(r.UDP)+len(r.TCP) == 0 && !r.Rest {
				t.Fatalf("routes %+v: nothing captured or routed", r)
			}
			var closed atomic.Bool
			var mu sync.Mutex
			var verdicts []policy.Verdict
			sink := func(v *policy.Verdict) {
				if closed.Load() {
					t.Errorf("a verdict after Close: %+v", *v)
				}
				mu.Lock()
				verdicts = append(verdicts, *v)
				mu.Unlock()
			}
			// Every verdict so far, once the language's workers have had it.
			settled := func(want int) []policy.Verdict {
				deadline := time.Now().Add(5 * time.Second)
				for {
					mu.Lock()
					n := len(verdicts)
					mu.Unlock()
					if n >= want || time.Now().After(deadline) {
						break
					}
					time.Sleep(time.Millisecond)
				}
				mu.Lock()
				defer mu.Unlock()
				return slices.Clone(verdicts)
			}
			langs, err := OpenAll(cfg, Env{State: &memState{dir: dir, ts: map[string]*spa.Timestamps{}}, Log: discard, Sink: sink})
			if err != nil {
				t.Fatal(err)
			}
			l := langs[0]
			if l.Name() != c.name || len(l.Clients()) == 0 {
				t.Fatalf("%v with clients %v", l.Name(), l.Clients())
			}
			allowed := append(slices.Clone(l.Reasons()), reasonsOfPolicy()...)

			// Junk: nothing granted, any refusal counted, no allocation.
			l.Decode(c.junk, sink)
			for _, v := range settled(0) {
				if v.Reason == "" && v.Note == "" || v.Reason != "" && !slices.Contains(allowed, v.Reason) {
					t.Fatalf("junk: %+v", v)
				}
			}
			if n := testing.AllocsPerRun(200, func() { l.Decode(c.junk, func(*policy.Verdict) {}) }); n != 0 {
				t.Errorf("junk allocates %v times a frame", n)
			}

			// A knock: exactly one request, for tcp/22.
			mu.Lock()
			verdicts = nil
			mu.Unlock()
			now := time.Now()
			frames := c.knock(t, dir, now)
			for _, f := range frames {
				l.Decode(f, sink)
			}
			var requests []policy.Request
			for _, v := range settled(1) {
				if v.Reason == "" && v.Note == "" {
					requests = append(requests, v.Request)
				}
			}
			if len(requests) != 1 || !slices.Contains(requests[0].Ports, ssh22) && len(requests[0].Ports) > 0 {
				t.Fatalf("a valid knock: requests %+v (verdicts %+v)", requests, verdicts)
			}

			// Its replay: refused, with a counted reason.
			if c.replay {
				mu.Lock()
				verdicts = nil
				mu.Unlock()
				for _, f := range frames {
					l.Decode(f, sink)
				}
				got := settled(1)
				if len(got) == 0 {
					t.Fatal("no verdict for a replay")
				}
				for _, v := range got {
					if v.Reason == "" && v.Note == "" || v.Reason != "" && !slices.Contains(allowed, v.Reason) {
						t.Fatalf("a replay: %+v", v)
					}
				}
			}

			l.Tick(now.Add(time.Minute), sink)
			l.Close()
			closed.Store(true)
		})
	}
}

func reasonsOfPolicy() []string {
	var out []string
	for _, r := range policy.Refusals {
		out = append(out, string(r))
	}
	return out
}

var discard = slog.New(slog.DiscardHandler)

func fkoB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }
