// Package ratelimit is the per-source token bucket every knock language
// puts before the work an attacker could make it do (public-key
// operations, GnuPG, stanza trials, door completions). It never decides
// who may knock: it only bounds how often.
package ratelimit

import (
	"net/netip"
	"sync"
	"time"
)

// Limiter is a per-source token bucket that runs before any public-key
// work, so one source sending packets with a valid mac1 (it knows the server
// public key) cannot spend more than Rate decryptions a second. Its contract:
//   - IPv6 sources are keyed by their /64 (SetIPv6Prefix changes it): one
//     host's /64 holds 2^64 addresses, each would otherwise bring a fresh
//     budget;
//   - at most max sources are tracked; when the table is full the source
//     tracked longest is evicted (a flood of new sources cannot lock out
//     new legitimate ones, it only recycles the oldest entries);
//   - a clock stepped back never drains a bucket.
//
// The zero value is not usable; use New. Safe for concurrent use.
type Limiter struct {
	rate, burst float64
	max         int
	prefix6     int

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
	order   []netip.Addr // ring of tracked keys, oldest at next
	next    int
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New allows each source rate packets a second with bursts of burst,
// tracking at most max sources (max 1: one bucket for everyone, keyed by
// the zero address).
func New(rate, burst float64, max int) *Limiter {
	return &Limiter{rate: rate, burst: burst, max: max, prefix6: 64, buckets: make(map[netip.Addr]*bucket)}
}

// SetIPv6Prefix keys IPv6 sources by their first bits (32 to 128; other
// values leave the /64 in place).
func (l *Limiter) SetIPv6Prefix(bits int) {
	if bits < 32 || bits > 128 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prefix6 = bits
}

// Allow takes a token from src's bucket.
func (l *Limiter) Allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := src.Unmap()
	if key.Is6() && l.prefix6 < 128 {
		if p, err := key.Prefix(l.prefix6); err == nil {
			key = p.Addr()
		}
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		if len(l.buckets) >= l.max {
			delete(l.buckets, l.order[l.next]) // the source tracked longest
			l.order[l.next] = key
			l.next = (l.next + 1) % l.max
		} else {
			l.order = append(l.order, key)
		}
		l.buckets[key] = b
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
