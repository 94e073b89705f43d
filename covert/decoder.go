package covert

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/replay"
)

// Door is a covert door: SYNs to a closed TCP port that carry an
// authenticated request in their header fields.
type Door struct {
	Name    string
	Port    uint16
	MaxSkew time.Duration
	Clients []Client
}

// Client is one client of a covert door.
type Client struct {
	Name     string
	Secret   []byte
	Allow    []port.Spec
	Duration time.Duration
}

// Refusal reasons of the covert language.
const (
	ReasonBadKnock = "bad knock"
	ReasonStale    = "stale timestamp"
	ReasonReplay   = "replay"
	ReasonState    = "state error"
)

// Reasons lists the refusal reasons, for metrics.
var Reasons = []string{ReasonBadKnock, ReasonStale, ReasonReplay, ReasonState}

const (
	sources = 65536           // reassembly slots per door
	window  = 5 * time.Second // both SYNs of a knock arrive within this
)

type door struct {
	cfg   Door
	keys  []*Keys     // per client
	ids   []replay.ID // each client's key in the replay store
	reasm *Reassembler
}

// Decoder is the covert language in the daemon's pipeline: it pairs SYNs
// per source, opens the message, checks freshness and replay (a strictly
// increasing timestamp per client, kept in replay) and turns a knock into
// a policy Request for the knocker's address. Safe for concurrent use.
type Decoder struct {
	mu     sync.Mutex
	doors  map[uint16]*door
	replay replay.Store
	out    policy.Verdict
}

// NewDecoder derives each client's keys.
func NewDecoder(doors []Door, store replay.Store) (*Decoder, error) {
	d := &Decoder{doors: map[uint16]*door{}, replay: store}
	for _, c := range doors {
		dr := &door{cfg: c, reasm: NewReassembler(sources, window)}
		for _, cl := range c.Clients {
			k, err := DeriveKeys(cl.Secret, c.Name)
			if err != nil {
				return nil, fmt.Errorf("covert %s client %s: %w", c.Name, cl.Name, err)
			}
			dr.keys = append(dr.keys, k)
			// The same strictly-increasing-timestamp store as postern
			// SPA, keyed by a hash of door and client name.
			dr.ids = append(dr.ids, replay.ID(sha256.Sum256([]byte("covert\x00"+c.Name+"\x00"+cl.Name))))
		}
		d.doors[c.Port] = dr
	}
	return d, nil
}

// Identity is a covert client's name in policy and logs: door/client.
func Identity(door, client string) string { return door + "/" + client }

// PolicyClients are what each covert client may do, for package policy.
func PolicyClients(doors []Door) []policy.Client {
	var out []policy.Client
	for _, d := range doors {
		for _, c := range d.Clients {
			out = append(out, policy.Client{Language: policy.Covert, Name: Identity(d.Name, c.Name), Allow: c.Allow,
				MaxDuration: c.Duration, DefaultDuration: c.Duration, AllowSource: true})
		}
	}
	return out
}

// Ports returns the doors' TCP ports, which postern closes.
func Ports(doors []Door) []port.Spec {
	var out []port.Spec
	for _, c := range doors {
		if sp := (port.Spec{Proto: port.TCP, Num: c.Port}); !slices.Contains(out, sp) {
			out = append(out, sp)
		}
	}
	slices.SortFunc(out, func(a, b port.Spec) int { return int(a.Num) - int(b.Num) })
	return out
}

// MaxSkew is the widest freshness window of the doors.
func MaxSkew(doors []Door) time.Duration {
	var m time.Duration
	for _, d := range doors {
		m = max(m, d.MaxSkew)
	}
	return m
}

// Decode takes one packet to a covert port: a SYN is paired with the
// source's earlier one; anything else (an ACK, a RST) is ignored.
func (d *Decoder) Decode(f *capture.Frame, emit policy.Sink) {
	// The verdict goes out after the lock is released (the sink may block
	// on the firewall); d.out is the capture goroutine's alone.
	if d.decode(f) {
		emit(&d.out)
	}
}

// decode reads one packet under the lock and says whether d.out holds a
// verdict.
func (d *Decoder) decode(f *capture.Frame) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	dr := d.doors[f.DstPort]
	if dr == nil || f.Proto != capture.ProtoTCP {
		return false
	}
	c, ok := CarrierOf(f)
	if !ok {
		return false
	}
	pair, ok := dr.reasm.Add(f.Src, c, f.Time)
	if !ok {
		return false
	}
	b := Binding{Src: f.Src, Dst: f.Dst, DstPort: f.DstPort}
	for _, m := range [][MessageSize]byte{Join(pair[0], pair[1]), Join(pair[1], pair[0])} {
		for i, k := range dr.keys {
			req, err := k.Open(m, b)
			if err != nil {
				continue
			}
			dr.reasm.Done(f.Src)
			d.decide(f, dr, i, req)
			return true
		}
	}
	// Not a knock (yet): the older SYN stays for one more pairing, so a
	// lost SYN costs only that knock.
	d.out.Refuse(policy.Covert, f.Src, "", ReasonBadKnock, slog.String("door", dr.cfg.Name))
	return true
}

func (d *Decoder) decide(f *capture.Frame, dr *door, i int, req Request) {
	cl := dr.cfg.Clients[i]
	who := Identity(dr.cfg.Name, cl.Name)
	if age := f.Time.Sub(req.Time); age > dr.cfg.MaxSkew || age < -dr.cfg.MaxSkew {
		d.out.Refuse(policy.Covert, f.Src, who, ReasonStale)
		return
	}
	if err := d.replay.AdvanceLane(dr.ids[i], replay.LaneAny, req.Time.UnixNano()); err != nil {
		if errors.Is(err, replay.ErrReplay) {
			d.out.Refuse(policy.Covert, f.Src, who, ReasonReplay)
		} else {
			d.out.Refuse(policy.Covert, f.Src, who, ReasonState, slog.String("detail", err.Error()))
		}
		return
	}
	d.out.Grant(policy.Request{Language: policy.Covert, Client: who, Src: f.Src, UseSource: true,
		Ports: []port.Spec{req.Port}, Duration: cl.Duration})
}

// Expire drops SYNs whose partner did not come in time.
func (d *Decoder) Expire(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dr := range d.doors {
		dr.reasm.Expire(now)
	}
}

// Evictions counts sources evicted from full reassembly tables.
func (d *Decoder) Evictions() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var n uint64
	for _, dr := range d.doors {
		n += dr.reasm.Evictions
	}
	return n
}
