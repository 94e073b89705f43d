package spa

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
)

// verdicts collects what a parallel decoder emits (from its workers).
type verdicts struct {
	mu   sync.Mutex
	seen []policy.Verdict
}

func (v *verdicts) sink(out *policy.Verdict) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c := *out
	c.Request.Ports = append(c.Request.Ports[:0:0], out.Request.Ports...)
	v.seen = append(v.seen, c)
}

func (v *verdicts) count(reason string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, s := range v.seen {
		if s.Reason == reason {
			n++
		}
	}
	return n
}

func TestParallelDecoder(t *testing.T) {
	f := newFixture(t, filepath.Join(t.TempDir(), "ts"))
	bob, _ := GenerateClientKey()
	f.v.cfg.Clients[bob.Public()] = "bob"
	var got verdicts
	d := NewParallelDecoder(f.v, 2, got.sink)
	frame := func(src netip.Addr, pkt []byte) *capture.Frame {
		return &capture.Frame{Src: src, Dst: f.dst, Payload: pkt, Time: f.now}
	}
	// Two clients, each knocking from its own address, interleaved: each
	// one's knocks must be verified in order (their timestamps increase, a
	// later one verified first would make the earlier a replay).
	const n = 20
	var last []byte
	for i := range n {
		for c, key := range []ClientPrivateKey{f.client, bob} {
			src := netip.AddrFrom4([4]byte{198, 18, 1, byte(c)})
			k := f.knock()
			k.Allow, k.Time = src, f.now.Add(time.Duration(i)*time.Millisecond)
			pkt, err := Seal(key, f.server.Public(), k)
			if err != nil {
				t.Fatal(err)
			}
			d.Decode(frame(src, pkt), got.sink)
			last = pkt
		}
	}
	d.Decode(frame(netip.AddrFrom4([4]byte{198, 18, 1, 1}), last), got.sink) // bob's last, again
	junk := append([]byte(nil), last...)
	junk[len(junk)-1] ^= 1
	d.Decode(frame(f.src, junk), got.sink) // refused on the capture goroutine
	d.Close()
	if g, r, j := got.count(""), got.count(Replayed.String()), got.count(BadMAC1.String()); g != 2*n || r != 1 || j != 1 {
		t.Fatalf("granted %d (want %d), replays %d, bad mac1 %d", g, 2*n, r, j)
	}
	for _, s := range got.seen {
		if s.Reason == "" && (len(s.Request.Ports) != 2 || s.Request.Allow != s.Src) {
			t.Fatalf("grant %+v", s.Request)
		}
	}
}

// A worker that cannot keep up: the capture goroutine never waits, it
// refuses what does not fit in the queue.
func TestParallelDecoderBusy(t *testing.T) {
	f := newFixture(t, filepath.Join(t.TempDir(), "ts"))
	release := make(chan struct{})
	var got verdicts
	slow := func(out *policy.Verdict) { <-release; got.sink(out) }
	d := NewParallelDecoder(f.v, 1, slow)
	pkt := f.seal(t, f.knock())
	busy := 0
	for range queuePerWorker + 10 {
		d.Decode(&capture.Frame{Src: f.src, Dst: f.dst, Payload: pkt, Time: f.now}, func(out *policy.Verdict) {
			if out.Reason == Busy.String() {
				busy++
			}
		})
	}
	close(release)
	d.Close()
	if busy < 9 {
		t.Fatalf("%d refused as busy, want at least 9 (a queue of %d and one in hand)", busy, queuePerWorker)
	}
}

// BenchmarkValidMAC1Flood: packets that carry a valid mac1 (anyone who has
// the server's public key can make them) but come from no client — what
// costs the server HPKE work — each from its own source, through the
// decoder with 1 and 2 verification workers. ns/op is per packet, wall
// clock: with 2 workers on 2 cores it should be about half.
func BenchmarkValidMAC1Flood(b *testing.B) {
	f := newFixture(b, filepath.Join(b.TempDir(), "ts"))
	stranger, _ := GenerateClientKey()
	pkts := make([][]byte, 256)
	for i := range pkts {
		k := f.knock()
		k.Time = f.now.Add(time.Duration(i) * time.Millisecond)
		p, err := Seal(stranger, f.server.Public(), k)
		if err != nil {
			b.Fatal(err)
		}
		pkts[i] = p
	}
	f.v.cfg.Limiter = nil // sources are spoofed at random: no per-source limit helps
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			var mu sync.Mutex
			unknown := 0
			d := NewParallelDecoder(f.v, workers, func(out *policy.Verdict) {
				if out.Reason == UnknownClient.String() {
					mu.Lock()
					unknown++
					mu.Unlock()
				}
			})
			inline := func(*policy.Verdict) {}
			i := 0
			for b.Loop() {
				src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				fr := capture.Frame{Src: src, Dst: f.dst, Payload: pkts[i%len(pkts)], Time: f.now}
				// The capture loop would refuse what does not fit; the
				// benchmark measures throughput, so it waits for room.
				for !d.tryDecode(&fr, inline) {
					time.Sleep(10 * time.Microsecond)
				}
				i++
			}
			d.Close()
			if unknown != i {
				b.Fatalf("%d of %d packets verified", unknown, i)
			}
		})
	}
}

// tryDecode is Decode that, instead of refusing a packet its worker has no
// room for, says so (benchmarks wait for room).
func (d *Decoder) tryDecode(f *capture.Frame, emit policy.Sink) bool {
	r, c, pre := d.v.PrecheckClient(f.Src, f.Payload, f.Time)
	if r != Accepted {
		decided(d.v, r, f.Src, &d.knock, &d.out)
		emit(&d.out)
		return true
	}
	return d.enqueue(f, c, pre)
}
