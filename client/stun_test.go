package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// stunServer answers Binding requests on loopback; answer says, for the
// nth request, which address to report, or false to drop it.
func stunServer(t *testing.T, strays bool, answer func(n int) (netip.Addr, bool)) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for n := 0; ; {
			size, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:size]...)}
			if req.Decode() != nil || req.Type != stun.BindingRequest {
				continue
			}
			seen, ok := answer(n)
			n++
			if !ok {
				continue
			}
			if strays {
				// A stray datagram first: the client must ignore it.
				other, _ := stun.Build(stun.TransactionID, stun.BindingSuccess)
				pc.WriteTo(other.Raw, from)
			}
			res, _ := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: seen.AsSlice(), Port: 40000}, stun.Fingerprint)
			pc.WriteTo(res.Raw, from)
		}
	}()
	return pc.LocalAddr().String()
}

// fakeSTUN answers with the address given (what a STUN server beyond a
// NAT would see); drop makes it ignore that many requests first, as a
// lossy path would.
func fakeSTUN(t *testing.T, seen netip.Addr, drop int) string {
	return stunServer(t, true, func(n int) (netip.Addr, bool) { return seen, n >= drop })
}

// fakeSTUNSaying answers its nth Binding request with says[n] (the last
// one after that): a server whose answer changes, as when a forged
// response wins the race once.
func fakeSTUNSaying(t *testing.T, says ...netip.Addr) string {
	return stunServer(t, false, func(n int) (netip.Addr, bool) { return says[min(n, len(says)-1)], true })
}

// No single STUN answer decides the address a knock is signed for.
func TestDiscoverAddressTrustsNoSingleAnswer(t *testing.T) {
	public, forged := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("198.51.100.66")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := fakeSTUNSaying(t, public), fakeSTUNSaying(t, forged)
	_, err := DiscoverAddress(ctx, "udp4", []string{a, b})
	if err == nil || !strings.Contains(err.Error(), public.String()) || !strings.Contains(err.Error(), forged.String()) ||
		!strings.Contains(err.Error(), "disagree") {
		t.Fatalf("two servers that disagree: %v", err)
	}
	// One server whose second answer differs from its first.
	if _, err := DiscoverAddress(ctx, "udp4", []string{fakeSTUNSaying(t, forged, public)}); err == nil ||
		!strings.Contains(err.Error(), "disagree") {
		t.Fatalf("one server, two answers: %v", err)
	}
	// Two that agree, and the third is never asked.
	if got, err := DiscoverAddress(ctx, "udp4", []string{a, fakeSTUNSaying(t, public), b}); err != nil || got != public {
		t.Fatalf("two servers that agree: %v %v", got, err)
	}
}

func TestDiscoverAddress(t *testing.T) {
	public := netip.MustParseAddr("203.0.113.7")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := DiscoverAddress(ctx, "udp4", []string{fakeSTUN(t, public, 0)})
	if err != nil || got != public {
		t.Fatalf("got %v %v, want %v", got, err, public)
	}
	// A server that loses the first request is asked again.
	if got, err := DiscoverAddress(ctx, "udp4", []string{fakeSTUN(t, public, 1)}); err != nil || got != public {
		t.Fatalf("after a lost request: %v %v", got, err)
	}
	// A dead server is skipped for the next one.
	dead, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	if got, err := DiscoverAddress(ctx, "udp4", []string{deadAddr, fakeSTUN(t, public, 0)}); err != nil || got != public {
		t.Fatalf("second server: %v %v", got, err)
	}
	if _, err := DiscoverAddress(ctx, "udp4", nil); !errors.Is(err, ErrNoSTUNServer) {
		t.Fatalf("no server: %v", err)
	}
	if _, err := DiscoverAddress(ctx, "udp4", []string{deadAddr}); err == nil || !strings.Contains(err.Error(), deadAddr) {
		t.Fatalf("dead server: %v", err)
	}
}

// FuzzSTUNResponse feeds arbitrary datagrams to the response reader: it
// never panics, and a mapped address only comes from a success response to
// the request's transaction.
func FuzzSTUNResponse(f *testing.F) {
	req, _ := stun.Build(stun.TransactionID, stun.BindingRequest)
	ok, _ := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.ParseIP("203.0.113.7"), Port: 1}, stun.Fingerprint)
	plain, _ := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.MappedAddress{IP: net.ParseIP("2001:db8::7"), Port: 1})
	failed, _ := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingError)
	for _, seed := range [][]byte{ok.Raw, plain.Raw, failed.Raw, req.Raw, {}, make([]byte, 20)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, found, err := mappedAddress(b, req.TransactionID)
		if found && err == nil && !a.IsValid() {
			t.Fatalf("found an invalid address in %x", b)
		}
		if a.IsValid() {
			m := &stun.Message{Raw: append([]byte(nil), b...)}
			if m.Decode() != nil || m.TransactionID != req.TransactionID || m.Type != stun.BindingSuccess {
				t.Fatalf("address %v from a datagram that is no answer to the request", a)
			}
		}
	})
}

func TestFwknopResolveAllow(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") == "" {
			http.Error(w, "no agent", http.StatusBadRequest)
			return
		}
		w.Write([]byte("<html>Your IP: 203.0.113.9.</html>\n"))
	}))
	defer srv.Close()
	ctx := context.Background()
	r, _ := ParseFwknopArgs([]string{"-A", "tcp/22", "-R", "--resolve-url", srv.URL, "-D", "198.18.0.1", "--key-rijndael", "k", "--no-rc-file"})
	s, err := r.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if !s.WantsResolve() {
		t.Fatal("-R does not ask for resolving")
	}
	if err := s.ResolveAllow(ctx, nil); err != nil {
		t.Fatal(err)
	}
	p, _, err := BuildFwknop(s, time.Now())
	if err != nil || p.Message.Message != "203.0.113.9,tcp/22" {
		t.Fatalf("%v %+v", err, p)
	}
	// STUN servers answer when no URL is given.
	r, _ = ParseFwknopArgs([]string{"-A", "tcp/22", "-R", "-D", "198.18.0.1", "--key-rijndael", "k", "--no-rc-file"})
	s, _ = r.Resolve()
	if err := s.ResolveAllow(ctx, []string{fakeSTUN(t, netip.MustParseAddr("198.51.100.4"), 0)}); err != nil || s.get("ALLOW_IP") != "198.51.100.4" {
		t.Fatalf("STUN: %v %q", err, s.get("ALLOW_IP"))
	}
	for _, body := range []string{"no address here", "::1", "300.1.2.3"} {
		if _, ok := firstIPv4(body); ok {
			t.Errorf("found an address in %q", body)
		}
	}
}
