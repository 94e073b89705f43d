package firewall_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/postern/postern/firewall"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/port"
)

// BenchmarkGrant measures one grant as the daemon makes it (Keeper over a
// real backend in a namespace: nftables over one lasting netlink
// connection, iptables+ipset through ipset) with grants already live: the
// cost must stay flat as grants pile up. ipset's sets hold 65 536 by
// default, so iptables is measured up to 50 000.
// Run as root: go test ./firewall -run '^$' -bench Grant
func BenchmarkGrant(b *testing.B) {
	for _, backend := range []string{"nftables", "iptables"} {
		for _, live := range []int{0, 1000, 50_000, 100_000} {
			if backend == "iptables" && live > 50_000 {
				continue
			}
			b.Run(fmt.Sprintf("%s/live=%d", backend, live), func(b *testing.B) {
				k := benchKeeper(b, backend)
				// Fill in batches, as many knocks arriving together are.
				batch := make([]firewall.Grant, 0, 1000)
				for i := range live {
					batch = append(batch, firewall.Grant{Addr: benchAddr(i), Port: ssh, Timeout: time.Hour, Name: "fill"})
					if len(batch) == cap(batch) || i == live-1 {
						if err := k.Grant(batch); err != nil {
							b.Fatal(err)
						}
						batch = batch[:0]
					}
				}
				b.ResetTimer()
				for i := range b.N {
					g := firewall.Grant{Addr: benchAddr(live + i), Port: ssh, Timeout: time.Hour, Name: "bench"}
					if err := k.Grant([]firewall.Grant{g}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "grants/s")
			})
		}
	}
}

// BenchmarkGrantBatch measures grants made 1 000 at a time, as a restore
// after a flushed ruleset makes them.
func BenchmarkGrantBatch(b *testing.B) {
	for _, backend := range []string{"nftables", "iptables"} {
		b.Run(backend, func(b *testing.B) {
			k := benchKeeper(b, backend)
			batch := make([]firewall.Grant, 1000)
			for i := range b.N {
				for j := range batch {
					batch[j] = firewall.Grant{Addr: benchAddr((i*len(batch) + j) % 60_000), Port: ssh, Timeout: time.Duration(i+1) * time.Minute, Name: "batch"}
				}
				if err := k.Grant(batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "grants/s")
		})
	}
}

// benchKeeper sets up a keeper over backend in a fresh namespace.
func benchKeeper(b *testing.B, backend string) *firewall.Keeper {
	ns := netnstest.New(b, "bench")
	var fw firewall.Backend
	if backend == "iptables" {
		netnstest.Require(b, "iptables", "ip6tables", "ipset")
		fw = firewall.NewIPTables(func(name string, args ...string) *exec.Cmd {
			return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
		})
	} else {
		netnstest.Require(b, "nft")
		f, err := os.Open(ns.Path())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
		if err != nil {
			b.Fatal(err)
		}
		fw = firewall.NewNFTables(c)
	}
	b.Cleanup(func() { fw.Close() })
	k := firewall.NewKeeper(fw, nil)
	if err := k.Setup(firewall.Rules{Protected: []port.Spec{ssh}}); err != nil {
		b.Fatal(err)
	}
	return k
}

// benchAddr is the i-th address of 10.0.0.0/8.
func benchAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}
