//go:build linux

package capture_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/port"
)

// collect runs src until ctx ends, sending copies of what it sees.
func collect(ctx context.Context, t *testing.T, src capture.Source) <-chan capture.Frame {
	frames := make(chan capture.Frame, 64)
	go func() {
		err := src.Run(ctx, func(f *capture.Frame, err error) {
			if err == nil {
				c := *f
				c.Payload = append([]byte(nil), f.Payload...)
				frames <- c
			}
		})
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	return frames
}

func sendUDP(t *testing.T, ns *netnstest.NS, to netip.AddrPort, payload string) {
	t.Helper()
	c, err := ns.Dial("udp", netip.Addr{}, to, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatal(err)
	}
}

// TestAFPacketInNamespace checks the real socket and the kernel-run filter:
// knocks to the knock port arrive with their addresses, IPv4 and IPv6;
// packets to other ports never reach user space.
func TestAFPacketInNamespace(t *testing.T) {
	netnstest.Require(t)
	p := netnstest.NewPair(t)
	var src *capture.AFPacket
	if err := p.Server.Do(func() (err error) {
		src, err = capture.OpenAFPacket(netnstest.Interface, []capture.Match{{Proto: port.UDP, Lo: 62201, Hi: 62201}})
		return
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	frames := collect(ctx, t, src)

	sendUDP(t, p.Client, netip.AddrPortFrom(p.Server4, 62299), "other port")
	sendUDP(t, p.Client, netip.AddrPortFrom(p.Server4, 62201), "knock4")
	sendUDP(t, p.Client, netip.AddrPortFrom(p.Server6, 62201), "knock6")
	want := map[string]netip.Addr{"knock4": p.Client4, "knock6": p.Client6}
	for len(want) > 0 {
		select {
		case f := <-frames:
			src, ok := want[string(f.Payload)]
			if !ok {
				t.Fatalf("filter let through %q to port %d", f.Payload, f.DstPort)
			}
			if f.Src != src || f.DstPort != 62201 || f.Proto != capture.ProtoUDP {
				t.Fatalf("frame %q: %+v", f.Payload, f)
			}
			delete(want, string(f.Payload))
		case <-time.After(3 * time.Second):
			t.Fatalf("never captured %v", want)
		}
	}
	select {
	case f := <-frames:
		t.Fatalf("unexpected frame %q", f.Payload)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestUDPSourceInNamespace(t *testing.T) {
	netnstest.Require(t)
	p := netnstest.NewPair(t)
	var src *capture.UDP
	if err := p.Server.Do(func() (err error) { src, err = capture.ListenUDP(62201); return }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	frames := collect(ctx, t, src)
	for _, c := range []struct{ from, to netip.Addr }{{p.Client4, p.Server4}, {p.Client6, p.Server6}} {
		sendUDP(t, p.Client, netip.AddrPortFrom(c.to, 62201), "hello")
		select {
		case f := <-frames:
			if f.Src != c.from || f.Dst != c.to || string(f.Payload) != "hello" {
				t.Fatalf("got %+v, want %v → %v", f, c.from, c.to)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("nothing received")
		}
	}
}
