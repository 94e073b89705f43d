package main

import (
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
)

// grant = "once" behind a NAT: the knock grants the NAT's public address;
// the first device's connection uses the grant and goes on, a second
// device behind the same address cannot get in, and a new knock lets one
// more connection in.
func TestOnceGrantBehindNAT(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{nat: true, extra: "grant = \"once\"\n"})
	r.start()
	srv, public := r.p.Server4, r.g.Gateway4
	mark := r.out.Mark()
	r.knock(srv, "--allow", public.String(), "--for", "60s")
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted", "allow="+public.String(), "mode=once")
	first := r.waitOpen(r.p.Client4, srv, time.Second, "the first device")
	defer first.Close()
	r.requireClosed(r.p.Client4b, srv, "a second device behind the same NAT address")
	r.requireClosed(r.p.Client4, srv, "a second connection of the first device")
	if err := echoes(first); err != nil {
		t.Fatalf("the connection that used the grant: %v", err)
	}
	r.out.WaitAfter(t, mark, 2*time.Second, "grant used: its connections are in", "connections=1")
	if n := r.gauge("postern_grants_consumed_total"); n != 1 {
		t.Errorf("postern_grants_consumed_total = %v, want 1", n)
	}
	r.knock(srv, "--allow", public.String(), "--for", "60s")
	r.waitOpen(r.p.Client4b, srv, time.Second, "the second device after its own knock").Close()
}

// A flush of the ruleset after one one-shot grant was used and while
// another is still unused brings back only the unused one.
func TestFlushRestoresOnlyUnusedOnceGrants(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{extra: "grant = \"once\"\n"})
	r.start()
	srv := r.p.Server4
	r.knock(srv, "--for", "60s")
	r.knock(srv, "--for", "60s", "--allow", r.p.Client4b.String())
	used := r.waitOpen(r.p.Client4, srv, time.Second, "A uses its grant")
	defer used.Close()
	mark := r.out.Mark()
	r.p.Server.Exec(t, "nft", "flush", "ruleset") // maybe before the audit saw A's grant used
	r.restoredWithin(mark, time.Second, "flush")
	r.requireClosed(r.p.Client4, srv, "A after the flush: its grant was used")
	r.waitOpen(r.p.Client4b, srv, time.Second, "B's unused grant, restored").Close()
	if set := r.p.Server.Exec(t, "nft", "list", "set", "inet", "postern", "once4"); strings.Contains(set, r.p.Client4.String()) {
		t.Fatalf("A's used grant is back:\n%s", set)
	}
}

// grant = {connections = 2}: each connection takes one; a flush after the
// first gives back only the one left (conntrack counts the used one);
// status shows what is left; the third connection is refused. With
// iptables the same, after `iptables -F` (ipset keeps the counter).
func TestCountedGrantThroughFlush(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ backend, extra, flush string }{
		{"nftables", "", "nft flush ruleset"},
		{"iptables", "[firewall]\nbackend = \"iptables\"\n", "iptables -F"},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			t.Parallel()
			if tc.backend == "iptables" {
				netnstest.Require(t, "iptables", "ip6tables", "ipset")
			}
			r := newRig(t, rigOptions{extra: "grant = { connections = 2 }\n" + tc.extra})
			r.start()
			srv := r.p.Server4
			mark := r.out.Mark()
			r.knock(srv, "--for", "60s")
			r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted", "mode=\"2 connections\"")
			first := r.waitOpen(r.p.Client4, srv, time.Second, "the first of two connections")
			defer first.Close()
			mark = r.out.Mark()
			flush := strings.Fields(tc.flush)
			r.p.Server.Exec(t, flush[0], flush[1:]...)
			r.restoredWithin(mark, time.Second, tc.flush)
			if st := r.p.Server.Exec(t, posternBin, "status"); !strings.Contains(st, "once") {
				t.Errorf("after one connection and a flush, status does not show one left:\n%s", st)
			}
			second := r.waitOpen(r.p.Client4, srv, time.Second, "the second of two connections, after the flush")
			defer second.Close()
			r.out.WaitAfter(t, mark, 2*time.Second, "grant used: its connections are in", "connections=2")
			r.requireClosed(r.p.Client4, srv, "a third connection on a grant for two")
			if err := echoes(first); err != nil {
				t.Fatalf("the first connection after the flush: %v", err)
			}
		})
	}
}

// idle = "2s": a connection carrying traffic keeps the grant past its
// duration and new connections still get in; once the traffic stops the
// grant ends idle; status shows the mode; a knock for a live grant renews
// it (msg=granted renewed=true).
func TestIdleGrantAndRenewal(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{extra: "idle = \"2s\"\n"})
	r.start()
	srv := r.p.Server4
	r.knock(srv, "--for", "20s")
	busy := r.waitOpen(r.p.Client4, srv, time.Second, "after the knock")
	if st := r.p.Server.Exec(t, posternBin, "status"); !strings.Contains(st, "idle 2s") {
		t.Errorf("status does not show the mode:\n%s", st)
	}
	start := time.Now()
	for time.Since(start) < 3*time.Second { // past idle: kept by the traffic
		if err := echoes(busy); err != nil {
			t.Fatalf("the busy connection: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	r.waitOpen(r.p.Client4, srv, time.Second, "a new connection while the grant is in use").Close()
	mark := r.out.Mark()
	r.knock(srv, "--for", "20s")
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=granted", "renewed=true", "mode=\"idle 2s\"")
	busy.Close()
	r.out.WaitAfter(t, mark, 6*time.Second, "grant ended idle", "idle=2s")
	r.requireClosed(r.p.Client4, srv, "after the grant ended idle")
}
