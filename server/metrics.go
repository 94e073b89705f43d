package server

import (
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
)

// Metrics counts every decision by language and outcome (granted, or the
// reason of a refusal). The set of names is fixed at start, so counting on
// the packet path is a map lookup and an atomic add, with no allocation.
type Metrics struct {
	counts map[outcome]*atomic.Uint64
	gauges []gauge

	// Per identity (client, stanza, door): granted and refused, for the
	// identities a configuration names (bounded by the configuration).
	mu       sync.RWMutex
	known    func(policy.Language, string) bool
	byClient map[clientOutcome]*atomic.Uint64
}

type clientOutcome struct {
	lang    policy.Language
	client  string
	granted bool
}

// outcome is one counter: a language and what became of its knocks.
type outcome struct {
	lang policy.Language
	name string
}

// gauge is a value read when metrics are scraped; typ is "gauge" or
// "counter" (a total kept elsewhere), labels go between the braces.
type gauge struct {
	name, help, typ, labels string
	read                    func() float64
}

func newMetrics(names []outcome) *Metrics {
	m := &Metrics{counts: make(map[outcome]*atomic.Uint64), byClient: map[clientOutcome]*atomic.Uint64{}}
	for _, r := range names {
		m.counts[r] = new(atomic.Uint64)
	}
	return m
}

// gauge adds a value read when metrics are scraped.
func (m *Metrics) gauge(name, help string, read func() float64) {
	m.gauges = append(m.gauges, gauge{name: name, help: help, typ: "gauge", read: read})
}

// counter adds a total kept elsewhere, read when metrics are scraped.
func (m *Metrics) counter(name, help string, read func() float64) {
	m.gauges = append(m.gauges, gauge{name: name, help: help, typ: "counter", read: read})
}

// labeled adds a gauge with labels (`version="1.2.0"`).
func (m *Metrics) labeled(name, help, labels string, read func() float64) {
	m.gauges = append(m.gauges, gauge{name: name, help: help, typ: "gauge", labels: labels, read: read})
}

// client counts a decision for a configured identity; others (unknown
// clients, junk) are counted only by outcome, so the label set stays
// bounded by the configuration.
func (m *Metrics) client(lang policy.Language, client string, granted bool) {
	if client == "" || m.known == nil {
		return
	}
	k := clientOutcome{lang, client, granted}
	m.mu.RLock()
	c := m.byClient[k]
	m.mu.RUnlock()
	if c == nil {
		if !m.known(lang, client) {
			return
		}
		m.mu.Lock()
		if c = m.byClient[k]; c == nil {
			c = new(atomic.Uint64)
			m.byClient[k] = c
		}
		m.mu.Unlock()
	}
	c.Add(1)
}

func (m *Metrics) inc(o outcome) {
	if c := m.counts[o]; c != nil {
		c.Add(1)
	}
}

// Get returns a counter's value.
func (m *Metrics) Get(lang policy.Language, name string) uint64 {
	if c := m.counts[outcome{lang, name}]; c != nil {
		return c.Load()
	}
	return 0
}

// WriteTo writes the counters in Prometheus text format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	names := make([]outcome, 0, len(m.counts))
	for n := range m.counts {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b outcome) int {
		return cmp.Or(cmp.Compare(a.lang, b.lang), cmp.Compare(a.name, b.name))
	})
	var total int64
	write := func(format string, args ...any) {
		n, _ := fmt.Fprintf(w, format, args...)
		total += int64(n)
	}
	write("# HELP postern_knocks_total Knocks by language and outcome: granted, or the reason they were refused.\n")
	write("# TYPE postern_knocks_total counter\n")
	for _, n := range names {
		write("postern_knocks_total{language=%q,outcome=%q} %d\n", n.lang, n.name, m.counts[n].Load())
	}
	m.mu.RLock()
	keys := make([]clientOutcome, 0, len(m.byClient))
	for k := range m.byClient {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b clientOutcome) int {
		return cmp.Or(cmp.Compare(a.lang, b.lang), cmp.Compare(a.client, b.client), cmp.Compare(fmt.Sprint(a.granted), fmt.Sprint(b.granted)))
	})
	write("# HELP postern_client_knocks_total Knocks by configured identity (client, stanza, door): granted or refused.\n")
	write("# TYPE postern_client_knocks_total counter\n")
	for _, k := range keys {
		res := "refused"
		if k.granted {
			res = "granted"
		}
		write("postern_client_knocks_total{language=%q,client=%q,result=%q} %d\n", k.lang, k.client, res, m.byClient[k].Load())
	}
	m.mu.RUnlock()
	for _, g := range m.gauges {
		write("# HELP %s %s\n# TYPE %s %s\n", g.name, g.help, g.name, g.typ)
		if g.labels != "" {
			write("%s{%s} %g\n", g.name, g.labels, g.read())
		} else {
			write("%s %g\n", g.name, g.read())
		}
	}
	return total, nil
}

// listen opens the metrics endpoint; serve answers on it until ctx ends.
func (m *Metrics) listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func (m *Metrics) serve(ctx context.Context, ln net.Listener, token string) error {
	srv := &http.Server{Handler: m.handler(token), ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics_listen: %w", err)
	}
	return nil
}

// handler serves /metrics, to requests with the bearer token if one is set.
func (m *Metrics) handler(token string) http.Handler {
	mux := http.NewServeMux()
	want := []byte("Bearer " + token)
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		if token != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="postern"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		m.WriteTo(w)
	})
	return mux
}

// logLimiter keeps a flood from turning into a flood of log lines: each
// reason may log a burst of lines, then about ten a second; lines held back
// are counted and the count rides on the next line of that reason.
type logLimiter struct {
	mu      sync.Mutex
	buckets map[outcome]*logBucket
}

type logBucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

const (
	logBurst = 20
	logRate  = 10 // lines a second per reason
	// A door's progress ("Stage N" in a knockd LogFile, which knockd
	// writes for every hit) gets more: every stage of ordinary use is
	// written, a flood of spoofed first hits still is not.
	noteBurst = 500
	noteRate  = 100
)

func (l *logLimiter) allow(reason outcome, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = make(map[outcome]*logBucket)
	}
	burst, rate := float64(logBurst), float64(logRate)
	if reason.name == knock.NoteProgress {
		burst, rate = noteBurst, noteRate
	}
	b := l.buckets[reason]
	if b == nil {
		b = &logBucket{tokens: burst, last: now}
		l.buckets[reason] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	s := b.suppressed
	b.suppressed = 0
	return true, s
}
