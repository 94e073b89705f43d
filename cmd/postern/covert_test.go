package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/covert"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/port"
)

const covertSecret = "a covert secret, at least 16 bytes"

func covertRig(t *testing.T) (*rig, string) {
	t.Helper()
	netnstest.Require(t, "tcpdump", "nft")
	r := newRig(t, rigOptions{noSPA: true})
	secret := r.writeFile("alice.covert", covertSecret+"\n")
	r.writeFile("postern.toml", fmt.Sprintf(`interface = %q
state_dir = %q
[[covert]]
name = "ssh-covert"
port = 4444
[[covert.client]]
name = "alice"
secret_file = %q
allow = ["tcp/22"]
duration = "3s"
`, netnstest.Interface, r.dir+"/state", secret))
	r.start()
	return r, secret
}

func TestCovertKnock(t *testing.T) {
	t.Parallel()
	for _, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) {
			r, secret := covertRig(t)
			srv, cli, other := r.p.Server4, r.p.Client4, r.p.Client4b
			if fam == "ipv6" {
				srv, cli, other = r.p.Server6, r.p.Client6, r.p.Client6b
			}
			dump := startTcpdump(t, r.p.Client, r.dir+"/knock.pcap", "tcp dst port 4444")
			// The host's own SYN to the covert port, for comparison
			// (the port drops it, so the connect times out).
			if c, err := r.p.Client.Dial("tcp", cli, netip.AddrPortFrom(srv, 4444), 300*time.Millisecond); err == nil {
				c.Close()
				t.Fatal("covert port accepted a connection")
			}
			r.requireClosed(cli, srv, "before the knock")
			out, err := r.postern("knock", "--covert", "--door", "ssh-covert", "--secret-file", secret, "--port", "4444", "-v", srv.String())
			if err != nil {
				t.Fatalf("postern knock --covert: %v\n%s", err, out)
			}
			knocked := time.Now()
			r.waitOpen(cli, srv, time.Second, "after the covert knock").Close()
			r.out.WaitFor(t, time.Second, `msg=granted language=covert`, "src="+cli.String(), "client=ssh-covert/alice", "ports=tcp/22")
			r.requireClosed(other, srv, "another address")
			pkts := dump.stop(t)
			if len(pkts) != 1+covert.SYNs {
				t.Fatalf("captured %d SYNs, want the kernel's and %d covert ones", len(pkts), covert.SYNs)
			}
			// Every covert SYN has the shape of the kernel's: flags,
			// options, window, TTL, DF… — only the carriers, the source
			// port and the checksums differ.
			want := synShape(t, pkts[0])
			for i, p := range pkts[1:] {
				if got := synShape(t, p); !bytes.Equal(got, want) {
					t.Fatalf("covert SYN %d differs from the host's own SYN beyond its carrier fields:\nkernel %x\ncovert %x", i, want, got)
				}
			}
			time.Sleep(time.Until(knocked.Add(3 * time.Second)))
			r.waitClosed(cli, srv, time.Second, "after the duration")

			if fam == "ipv4" {
				covertAttacks(t, r, pkts[1:], secret)
			}
		})
	}
}

// covertAttacks: replay (same and other source), a missing SYN, reordered
// SYNs, a wrong secret, decoys.
func covertAttacks(t *testing.T, r *rig, captured [][]byte, secret string) {
	srv, cli := r.p.Server4, r.p.Client4
	refused := func(name, reason string, send func()) {
		t.Helper()
		mark := r.out.Mark()
		send()
		r.out.WaitAfter(t, mark, 2*time.Second, `msg=refused`, reasonField(reason))
		r.requireClosed(cli, srv, name)
		r.requireClosed(r.p.Client4b, srv, name)
	}
	refused("replay from the same source", "replay", func() { r.sendRawIP(captured...) })
	refused("replay from another source", "bad knock", func() {
		var moved [][]byte
		for _, p := range captured {
			moved = append(moved, withSource(p, r.p.Client4b))
		}
		r.sendRawIP(moved...)
	})

	keys, err := covert.DeriveKeys([]byte(covertSecret), "ssh-covert")
	if err != nil {
		t.Fatal(err)
	}
	sh, err := covertShape(r, srv)
	if err != nil {
		t.Fatal(err)
	}
	build := func(when time.Time) [][]byte {
		msg, err := keys.Seal(covert.Request{Port: port.Spec{Proto: port.TCP, Num: 22}, Time: when},
			covert.Binding{Src: cli, Dst: srv, DstPort: 4444})
		if err != nil {
			t.Fatal(err)
		}
		var out [][]byte
		for i, c := range covert.Split(msg) {
			out = append(out, covert.SYN{Src: cli, Dst: srv, SrcPort: uint16(40000 + i), DstPort: 4444, Carrier: c}.Build(sh))
		}
		return out
	}
	// One SYN missing: nothing opens. The daemon's verdict on the lone SYN
	// comes when a second SYN from the source pairs with it: one with a
	// random carrier, whose pairing is refused.
	lone := build(time.Now())
	mark := r.out.Mark()
	r.sendRawIP(lone[0])
	r.sendRawIP(covert.SYN{Src: cli, Dst: srv, SrcPort: 40009, DstPort: 4444,
		Carrier: [covert.CarrierSize]byte(randomBytes(covert.CarrierSize))}.Build(sh))
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused language=covert", `reason="bad knock"`)
	if strings.Contains(r.out.String()[mark:], "msg=granted") {
		t.Fatal("a knock with one SYN missing opened")
	}
	r.requireClosed(cli, srv, "a knock with one SYN missing")
	// Reordered: reassembled and granted (the random SYN, kept from the
	// failed pairing, pairs once more with the first and is refused).
	syns := build(time.Now())
	r.sendRawIP(syns[1], syns[0])
	r.waitOpen(cli, srv, time.Second, "reordered SYNs").Close()
	r.waitClosed(cli, srv, 4*time.Second, "expiry")

	// A wrong secret.
	wrong := r.writeFile("wrong.covert", "not the secret the server has\n")
	refused("wrong secret", "bad knock", func() {
		if out, err := r.postern("knock", "--covert", "--door", "ssh-covert", "--secret-file", wrong, "--port", "4444", srv.String()); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	})
	// Decoys to other ports and from the client's other address are
	// ignored; the knock still opens.
	mark = r.out.Mark()
	if out, err := r.postern("knock", "--covert", "--door", "ssh-covert", "--secret-file", secret, "--port", "4444",
		"--decoys", "3", "--decoy-from", r.p.Client4b.String(), "-v", srv.String()); err != nil || strings.Count(out, "SYN ") != 6 {
		t.Fatalf("knock with decoys: %v\n%s", err, out)
	}
	r.waitOpen(cli, srv, time.Second, "knock with decoys").Close()
	// (A "bad knock" from the client's own address may appear: the wrong
	// secret's second SYN pairs once with this knock's first, as a lost
	// SYN does. The decoy address's lone SYN never pairs.)
	if strings.Contains(r.out.String()[mark:], "src="+r.p.Client4b.String()) {
		t.Fatalf("a decoy was taken for a knock:\n%s", r.out.String()[mark:])
	}
	r.requireClosed(r.p.Client4b, srv, "the decoy address")
}

func covertShape(r *rig, dst netip.Addr) (covert.Shape, error) {
	var sh covert.Shape
	err := r.p.Client.Do(func() (err error) { sh, err = covert.HostShape(dst); return })
	return sh, err
}
