package server

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"postern/capture"
	"postern/config"
	"postern/covert"
	"postern/firewall"
	"postern/port"
	"postern/spa"
)

// CovertReplayFile holds the covert clients' last timestamps in state_dir.
const CovertReplayFile = "covert-timestamps"

const (
	mCvGranted = "covert granted"
	mCvAuth    = "covert bad knock"
	mCvStale   = "covert stale timestamp"
	mCvReplay  = "covert replay"
	mCvPort    = "covert port not allowed"
	mCvState   = "covert state error"

	covertSources = 65536           // reassembly slots
	covertWindow  = 5 * time.Second // both SYNs of a knock arrive within this
)

var covertMetricNames = []string{mCvGranted, mCvAuth, mCvStale, mCvReplay, mCvPort, mCvState}

type covertDoor struct {
	cfg   config.Covert
	keys  []*covert.Keys // per client
	ids   []spa.ClientPublicKey
	reasm *covert.Reassembler
}

// covertHandler pairs covert SYNs per source and grants what verifies.
type covertHandler struct {
	s      *Server
	doors  map[uint16]*covertDoor
	replay *spa.Timestamps
}

func newCovertHandler(s *Server) (*covertHandler, error) {
	if err := os.MkdirAll(s.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	// The same strictly-increasing-timestamp store as postern SPA, keyed
	// by a hash of door and client name.
	ts, err := spa.LoadTimestamps(filepath.Join(s.cfg.StateDir, CovertReplayFile))
	if err != nil {
		return nil, err
	}
	h := &covertHandler{s: s, doors: map[uint16]*covertDoor{}, replay: ts}
	for _, c := range s.cfg.Covert {
		d := &covertDoor{cfg: c, reasm: covert.NewReassembler(covertSources, covertWindow)}
		for _, cl := range c.Clients {
			k, err := covert.DeriveKeys(cl.Secret, c.Name)
			if err != nil {
				return nil, fmt.Errorf("covert %s client %s: %w", c.Name, cl.Name, err)
			}
			d.keys = append(d.keys, k)
			d.ids = append(d.ids, spa.ClientPublicKey(sha256.Sum256([]byte("covert\x00"+c.Name+"\x00"+cl.Name))))
		}
		h.doors[c.Port] = d
	}
	return h, nil
}

// maxSkew is the widest freshness window of the covert doors.
func (h *covertHandler) maxSkew() time.Duration {
	var m time.Duration
	for _, d := range h.doors {
		m = max(m, d.cfg.MaxSkew)
	}
	return m
}

// covertPorts returns the covert doors' TCP ports, which postern closes.
func covertPorts(cfg *config.Config) []port.Spec {
	var out []port.Spec
	for _, c := range cfg.Covert {
		if sp := (port.Spec{Proto: port.TCP, Num: c.Port}); !slices.Contains(out, sp) {
			out = append(out, sp)
		}
	}
	slices.SortFunc(out, func(a, b port.Spec) int { return int(a.Num) - int(b.Num) })
	return out
}

// evictions is read by the metrics endpoint.
func (h *covertHandler) evictions() float64 {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	var n uint64
	for _, d := range h.doors {
		n += d.reasm.Evictions
	}
	return float64(n)
}

func (h *covertHandler) expire(now time.Time) {
	for _, d := range h.doors {
		d.reasm.Expire(now)
	}
}

// handle takes one SYN to a covert port. Anything else to the port (a
// retransmission's ACK, a RST) is ignored.
func (h *covertHandler) handle(f *capture.Frame) bool {
	d := h.doors[f.DstPort]
	if d == nil || f.Proto != capture.ProtoTCP {
		return false
	}
	c, ok := covert.CarrierOf(f)
	if !ok {
		return true
	}
	pair, ok := d.reasm.Add(f.Src, c, f.Time)
	if !ok {
		return true
	}
	b := covert.Binding{Src: f.Src, Dst: f.Dst, DstPort: f.DstPort}
	for _, m := range [][covert.MessageSize]byte{covert.Join(pair[0], pair[1]), covert.Join(pair[1], pair[0])} {
		for i, k := range d.keys {
			req, err := k.Open(m, b)
			if err != nil {
				continue
			}
			d.reasm.Done(f.Src)
			h.decide(f, d, i, req)
			return true
		}
	}
	// Not a knock (yet): the older SYN stays for one more pairing, so a
	// lost SYN costs only that knock.
	h.s.refuse(f.Src, "", mCvAuth, slogDoor(d))
	return true
}

func (h *covertHandler) decide(f *capture.Frame, d *covertDoor, i int, req covert.Request) {
	cl := d.cfg.Clients[i]
	s := h.s
	if age := f.Time.Sub(req.Time); age > d.cfg.MaxSkew || age < -d.cfg.MaxSkew {
		s.refuse(f.Src, cl.Name, mCvStale, slogDoor(d))
		return
	}
	if err := h.replay.Advance(d.ids[i], req.Time.UnixNano()); err != nil {
		reason := mCvReplay
		if err != spa.ErrReplay {
			reason = mCvState
		}
		s.refuse(f.Src, cl.Name, reason, slogDoor(d))
		return
	}
	if !slices.Contains(cl.Allow, req.Port) {
		s.refuse(f.Src, cl.Name, mCvPort, slogDoor(d))
		return
	}
	g := []firewall.Grant{{Addr: f.Src, Port: req.Port, Timeout: cl.Duration}}
	if !s.grant(g, f.Src, cl.Name) {
		return
	}
	s.metrics.inc(mCvGranted)
	s.log.Info("covert granted", "src", f.Src, "client", cl.Name, "door", d.cfg.Name, "ports", req.Port.String(),
		"duration", cl.Duration)
}

func slogDoor(d *covertDoor) slog.Attr { return slog.String("door", d.cfg.Name) }
