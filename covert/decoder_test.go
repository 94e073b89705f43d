package covert

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/replay"
	"github.com/postern/postern/spa"
)

// TSval reads the timestamp option and nothing past the options' end.
func TestTSval(t *testing.T) {
	ts := []byte{8, 10, 0, 0, 0, 42, 0, 0, 0, 0}
	for _, c := range []struct {
		name string
		opts []byte
		ok   bool
	}{
		{"timestamp", ts, true},
		{"after MSS and NOPs", append([]byte{2, 4, 5, 0xb4, 1, 1}, ts...), true},
		{"bad truncated timestamp", ts[:6], false},
		{"bad truncated after MSS", append([]byte{2, 4, 5, 0xb4}, ts[:9]...), false},
		{"bad length past the end", []byte{8, 10, 0, 0}, false},
		{"bad length byte missing", []byte{1, 8}, false},
		{"bad zero length", []byte{3, 0, 8, 10, 0, 0, 0, 42, 0, 0, 0, 0}, false},
		{"bad end of options first", append([]byte{0}, ts...), false},
	} {
		v, ok := TSval(c.opts)
		if ok != c.ok || ok && v != 42 {
			t.Errorf("%s: TSval(% x) = %d, %v", c.name, c.opts, v, ok)
		}
	}
}

// covertRig is a decoder with one door and one client, and the knocks
// that client sends, as frames.
type covertRig struct {
	t    *testing.T
	d    *Decoder
	k    *Keys
	port uint16
}

func newCovertRig(t *testing.T, replay replay.Store) *covertRig {
	door := Door{Name: "ssh", Port: 4444, MaxSkew: 30 * time.Second,
		Clients: []Client{{Name: "alice", Secret: []byte("a secret of sixteen+"), Allow: []port.Spec{ssh}, Duration: time.Minute}}}
	d, err := NewDecoder([]Door{door}, replay)
	if err != nil {
		t.Fatal(err)
	}
	return &covertRig{t: t, d: d, k: keys(t, "a secret of sixteen+", "ssh"), port: 4444}
}

// knock sends the two SYNs of a knock sealed at sealed and captured at
// at, and returns the verdict.
func (r *covertRig) knock(sealed, at time.Time) policy.Verdict {
	r.t.Helper()
	sh := Shape{MSS: 1460, Window: 64240, WScale: 7, SACK: true, TTL: 64}
	msg, err := r.k.Seal(Request{Port: ssh, Time: sealed}, bind)
	if err != nil {
		r.t.Fatal(err)
	}
	var got *policy.Verdict
	for i, c := range Split(msg) {
		var f capture.Frame
		if err := capture.Parse(SYN{Src: src, Dst: dst, SrcPort: 40001 + uint16(i), DstPort: r.port, Carrier: c}.Build(sh), &f); err != nil {
			r.t.Fatal(err)
		}
		f.Time = at
		r.d.Decode(&f, func(v *policy.Verdict) { c := *v; got = &c })
	}
	if got == nil {
		r.t.Fatal("no verdict for a whole knock")
	}
	return *got
}

// Every check of the covert language, with no root and no network.
func TestCovertDecoder(t *testing.T) {
	replay, err := spa.LoadTimestamps(filepath.Join(t.TempDir(), "covert-timestamps"))
	if err != nil {
		t.Fatal(err)
	}
	r := newCovertRig(t, replay)
	at := now
	for _, c := range []struct {
		name   string
		sealed time.Time
		reason string
	}{
		// Freshness first, while no knock is on record: a missing check
		// would grant these.
		{"bad stale (2 min old)", at.Add(-2 * time.Minute), ReasonStale},
		{"bad future (2 min ahead)", at.Add(2 * time.Minute), ReasonStale},
		{"fresh", at, ""},
		{"bad replay of the same time", at, ReasonReplay},
		{"bad older than the last", at.Add(-time.Second), ReasonReplay},
		{"fresh again, later", at.Add(time.Second), ""},
	} {
		v := r.knock(c.sealed, at.Add(2*time.Second))
		if v.Reason != c.reason {
			t.Errorf("%s: reason %q, want %q", c.name, v.Reason, c.reason)
		}
		if c.reason == "" && (v.Request.Client != "ssh/alice" || !v.Request.UseSource || len(v.Request.Ports) != 1) {
			t.Errorf("%s: request %+v", c.name, v.Request)
		}
	}
}

// A replay state that cannot be written decides from memory: the knock
// is granted, its replay still refused, and the state says what it holds
// unsaved.
func TestCovertDecoderUnwritableState(t *testing.T) {
	dir := t.TempDir()
	replay, err := spa.LoadTimestamps(filepath.Join(dir, "covert-timestamps"))
	if err != nil {
		t.Fatal(err)
	}
	r := newCovertRig(t, replay)
	os.Chmod(dir, 0o500)
	defer os.Chmod(dir, 0o700)
	if os.Getuid() == 0 {
		// root writes anyway: make the directory vanish instead.
		os.Chmod(dir, 0o700)
		os.RemoveAll(dir)
	}
	if v := r.knock(now, now); v.Reason != "" {
		t.Fatalf("knock with unwritable state: %q", v.Reason)
	}
	if n, err := replay.Unsaved(); n != 1 || err == nil {
		t.Fatalf("Unsaved = %d, %v", n, err)
	}
	if v := r.knock(now, now); v.Reason != ReasonReplay {
		t.Fatalf("its replay: %q", v.Reason)
	}
}
