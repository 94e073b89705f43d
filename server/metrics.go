package server

import (
	"cmp"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/policy"
)

// Metrics counts every decision by language and outcome (granted, or the
// reason of a refusal). The set of names is fixed at start, so counting on
// the packet path is a map lookup and an atomic add, with no allocation.
type Metrics struct {
	counts map[outcome]*atomic.Uint64
	gauges []gauge
}

// outcome is one counter: a language and what became of its knocks.
type outcome struct {
	lang policy.Language
	name string
}

type gauge struct {
	name, help string
	read       func() float64
}

func newMetrics(names []outcome) *Metrics {
	m := &Metrics{counts: make(map[outcome]*atomic.Uint64)}
	for _, r := range names {
		m.counts[r] = new(atomic.Uint64)
	}
	return m
}

// gauge adds a value read when metrics are scraped.
func (m *Metrics) gauge(name, help string, read func() float64) {
	m.gauges = append(m.gauges, gauge{name, help, read})
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
	for _, g := range m.gauges {
		write("# HELP %s %s\n# TYPE %s gauge\n%s %g\n", g.name, g.help, g.name, g.name, g.read())
	}
	return total, nil
}

func (m *Metrics) serve(addr string) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		m.WriteTo(w)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	go srv.Serve(ln)
	return srv, nil
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
)

func (l *logLimiter) allow(reason outcome, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = make(map[outcome]*logBucket)
	}
	b := l.buckets[reason]
	if b == nil {
		b = &logBucket{tokens: logBurst, last: now}
		l.buckets[reason] = b
	}
	b.tokens = min(logBurst, b.tokens+now.Sub(b.last).Seconds()*logRate)
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
