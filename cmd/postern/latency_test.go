package main

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/postern/postern/client"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// BenchmarkKnockToOpen measures, in the namespace setup, the time from
// sending a knock to the first TCP connection that succeeds, and reports the
// median and 99th percentile. Run it with a fixed count:
//
//	go test ./cmd/postern -run XXX -bench KnockToOpen -benchtime 100x
//
// Knocks are paced at the per-source rate limit (5 a second) so that none is
// refused; between knocks the grant is revoked through netlink.
func BenchmarkKnockToOpen(b *testing.B) {
	r := newRig(b, rigOptions{})
	r.start()
	key, err := spa.ParseClientPrivateKey(mustRead(b, r.alice))
	if err != nil {
		b.Fatal(err)
	}
	nsFile, err := os.Open(r.p.Server.Path())
	if err != nil {
		b.Fatal(err)
	}
	defer nsFile.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(nsFile.Fd())))
	if err != nil {
		b.Fatal(err)
	}
	fw := firewall.NewNFTables(conn)
	opts := client.Options{Key: key, ServerKey: r.server.Public(), Host: r.p.Server4.String(), Port: knockPort,
		Open: []port.Spec{sshPort}, Duration: 10 * time.Second}
	target := netip.AddrPortFrom(r.p.Server4, 22)

	var samples []time.Duration
	for b.Loop() {
		time.Sleep(210 * time.Millisecond)
		var start time.Time
		if err := r.p.Client.Do(func() error {
			start = time.Now()
			_, err := client.Knock(context.Background(), opts)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		for {
			c, err := r.p.Client.Dial("tcp", netip.Addr{}, target, 200*time.Microsecond)
			if err == nil {
				samples = append(samples, time.Since(start))
				c.Close()
				break
			}
			if time.Since(start) > 2*time.Second {
				b.Fatalf("knock %d never opened the port\n%s", len(samples), r.out)
			}
		}
		if err := fw.Revoke([]firewall.Grant{{Addr: r.p.Client4, Port: sshPort}}); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(samples[len(samples)/2]), "ms-median")
	b.ReportMetric(ms(samples[(len(samples)*99)/100]), "ms-p99")
	b.ReportMetric(0, "ns/op")
}

func mustRead(b testing.TB, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return string(data)
}
