package spa

import (
	"net/netip"
	"sync"
	"time"
)

// RateLimiter is a per-source token bucket that runs before any public-key
// work, so one source sending packets with a valid mac1 (it knows the server
// public key) cannot spend more than Rate decryptions a second. The table is
// bounded: when it is full, idle sources are swept out; if none is idle the
// new source is refused, which under a spoofed flood protects the CPU at the
// price of new sources until the flood's entries go idle. Safe for concurrent
// use.
type RateLimiter struct {
	rate, burst float64
	max         int

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewRateLimiter allows each source rate packets a second with bursts of
// burst, tracking at most max sources.
func NewRateLimiter(rate, burst float64, max int) *RateLimiter {
	return &RateLimiter{rate: rate, burst: burst, max: max, buckets: make(map[netip.Addr]*bucket)}
}

// Allow takes a token from src's bucket.
func (l *RateLimiter) Allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= l.max && !l.sweep(now) {
			return false
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[src] = b
	}
	// A clock stepped back must not drain the bucket for as long as the
	// step (frames carry monotonic time, but be safe without it).
	b.tokens = min(l.burst, b.tokens+max(0, now.Sub(b.last).Seconds())*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep drops buckets that have refilled completely (their sources have been
// quiet long enough that forgetting them changes nothing) and reports whether
// there is room now.
func (l *RateLimiter) sweep(now time.Time) bool {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for a, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, a)
		}
	}
	return len(l.buckets) < l.max
}
