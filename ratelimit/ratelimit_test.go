package ratelimit

import (
	"net/netip"
	"testing"
	"time"
)

func TestRateLimiterBounded(t *testing.T) {
	l := New(10, 5, 100)
	now := time.Unix(0, 0)
	first := netip.AddrFrom4([4]byte{198, 18, 1, 0})
	for i := range 100 {
		if !l.Allow(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), now) {
			t.Fatalf("source %d refused while table had room", i)
		}
	}
	for range 4 { // the first source uses up its burst
		l.Allow(first, now)
	}
	if l.Allow(first, now) {
		t.Fatal("burst not enforced")
	}
	// A full table of busy sources: a new source still gets in, and the
	// source tracked longest is evicted (it starts afresh).
	if !l.Allow(netip.MustParseAddr("198.18.2.1"), now) {
		t.Fatal("new source refused by a full table")
	}
	if !l.Allow(first, now) {
		t.Fatal("the oldest source was not evicted")
	}
	if len(l.buckets) > 100 {
		t.Fatalf("table grew to %d", len(l.buckets))
	}
}

// IPv6 sources share their /64's budget: a host cannot get a fresh bucket
// by changing its interface identifier.
func TestRateLimiterIPv6Prefix(t *testing.T) {
	l := New(1, 3, 100)
	now := time.Unix(0, 0)
	allowed := 0
	for i := range 2000 {
		a := netip.MustParseAddr("2001:db8:1:2::").As16()
		a[14], a[15] = byte(i>>8), byte(i)
		if l.Allow(netip.AddrFrom16(a), now) {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("2000 addresses of one /64: %d allowed, want the burst of 3", allowed)
	}
	if !l.Allow(netip.MustParseAddr("2001:db8:1:3::1"), now) {
		t.Fatal("another /64 shares the budget")
	}
	l.SetIPv6Prefix(128)
	if !l.Allow(netip.MustParseAddr("2001:db8:1:2::ffff"), now) {
		t.Fatal("with /128 keys an address got no budget of its own")
	}
}
