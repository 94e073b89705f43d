package spa

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
)

// Decoder is the postern SPA knock language in the daemon's pipeline: it
// turns a captured knock into a policy Request, or a refusal whose reason
// is a Reason's name. It never logs, counts or touches the firewall.
//
// The checks that cost no public-key operation (PrecheckClient) run on the
// capture goroutine. With workers, what passes them — packets with a valid
// mac1, the only ones that cost HPKE and a signature check — is verified
// on that many goroutines, one Verifier clone each, so every core works;
// a source's packets always go to the same worker, in order. A worker
// whose queue is full refuses at once (Busy): the capture goroutine never
// waits.
type Decoder struct {
	v     *Verifier
	knock Knock
	out   policy.Verdict

	jobs   []chan verifyJob // each worker's queue
	prio   []chan verifyJob // each worker's queue of pre-authenticated knocks
	seed   maphash.Seed
	wg     sync.WaitGroup
	closed sync.Once
}

type verifyJob struct {
	src, dst netip.Addr
	at       time.Time
	pkt      []byte
	client   ClientPublicKey // the client its token named
	pre      bool
}

// queuePerWorker bounds the packets waiting for each worker: at ~150 µs
// each, a full queue is ~40 ms of work.
const queuePerWorker = 256

// NewParallelDecoder wraps v and verifies on workers goroutines; emit
// receives their verdicts and must be safe for concurrent use. Close stops
// them.
func NewParallelDecoder(v *Verifier, workers int, emit policy.Sink) *Decoder {
	d := &Decoder{v: v, seed: maphash.MakeSeed()}
	if workers < 1 {
		workers = 1
	}
	for range workers {
		jobs, prio := make(chan verifyJob, queuePerWorker), make(chan verifyJob, queuePerWorker)
		d.jobs, d.prio = append(d.jobs, jobs), append(d.prio, prio)
		d.wg.Add(1)
		go d.work(v.Clone(), jobs, prio, emit)
	}
	return d
}

// Close stops the workers after the packets they hold; later calls wait
// for nothing.
func (d *Decoder) Close() {
	d.closed.Do(func() {
		for i := range d.jobs {
			close(d.jobs[i])
			close(d.prio[i])
		}
	})
	d.wg.Wait()
}

// work verifies its queues' packets, pre-authenticated ones first: a
// flood made with the server's public key fills only the other queue.
func (d *Decoder) work(v *Verifier, jobs, prio <-chan verifyJob, emit policy.Sink) {
	defer d.wg.Done()
	var k Knock
	var out policy.Verdict
	for jobs != nil || prio != nil {
		var j verifyJob
		var ok bool
		select {
		case j, ok = <-prio:
			if !ok {
				prio = nil
				continue
			}
		default:
			select {
			case j, ok = <-prio:
				if !ok {
					prio = nil
					continue
				}
			case j, ok = <-jobs:
				if !ok {
					jobs = nil
					continue
				}
			}
		}
		decided(v, v.OpenAs(j.src, j.dst, j.pkt, j.at, &k, j.client, j.pre), j.src, &k, &out)
		emit(&out)
	}
}

// Decode verifies one knock (or hands it to a worker) and gives emit the
// verdict. Junk allocates nothing.
func (d *Decoder) Decode(f *capture.Frame, emit policy.Sink) {
	k := &d.knock
	r, c, pre := d.v.PrecheckClient(f.Src, f.Payload, f.Time)
	if r != Accepted {
		decided(d.v, r, f.Src, k, &d.out)
		emit(&d.out)
		return
	}
	if !d.enqueue(f, c, pre) {
		decided(d.v, Busy, f.Src, k, &d.out)
		emit(&d.out)
	}
}

// enqueue hands a prechecked packet to its source's worker, unless that
// worker's queue is full.
func (d *Decoder) enqueue(f *capture.Frame, c ClientPublicKey, pre bool) bool {
	a := f.Src.As16()
	i := maphash.Bytes(d.seed, a[:]) % uint64(len(d.jobs))
	w := d.jobs[i]
	if pre {
		w = d.prio[i]
	}
	select {
	case w <- verifyJob{src: f.Src, dst: f.Dst, at: f.Time, pkt: append([]byte(nil), f.Payload...), client: c, pre: pre}:
		return true
	default:
		return false
	}
}

// decided turns a Reason (and the knock, when Accepted) into a verdict.
func decided(v *Verifier, r Reason, src netip.Addr, k *Knock, out *policy.Verdict) {
	if r != Accepted {
		out.Refuse(policy.SPA, src, "", r.String())
		return
	}
	out.Grant(policy.Request{
		Language: policy.SPA, Client: v.ClientName(k), Src: src, UseSource: k.UseSource,
		Allow: k.Allow, Ports: k.Ports, Duration: k.Duration, Action: k.Action, To: k.To,
	})
}
