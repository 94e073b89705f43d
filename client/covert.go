package client

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/postern/postern/covert"
	"github.com/postern/postern/port"
)

// CovertOptions describe one covert knock.
type CovertOptions struct {
	Host    netip.Addr
	Port    uint16 // the door's closed TCP port
	Door    string
	Secret  []byte
	Open    port.Spec
	Allow   netip.Addr   // the address the server will see (behind NAT); default: this host's
	Decoys  int          // SYNs with random fields to other ports
	From    []netip.Addr // other addresses of this host to send one decoy SYN each from
	Delay   time.Duration
	Verbose io.Writer
}

// CovertKnock sends a covert knock: SYNs built from raw sockets (needs
// CAP_NET_RAW) that look like this host's own connect() SYNs.
func CovertKnock(o CovertOptions) error {
	keys, err := covert.DeriveKeys(o.Secret, o.Door)
	if err != nil {
		return err
	}
	dst := o.Host.Unmap()
	local, err := covert.LocalAddr(dst)
	if err != nil {
		return fmt.Errorf("covert: no route to %v: %w", dst, err)
	}
	shape, err := covert.HostShape(dst)
	if err != nil {
		return err
	}
	bindSrc := local
	if o.Allow.IsValid() {
		bindSrc = o.Allow.Unmap()
	}
	b := covert.Binding{Src: bindSrc, Dst: dst, DstPort: o.Port}
	var carriers [covert.SYNs][covert.CarrierSize]byte
	t := time.Now()
	for {
		msg, err := keys.Seal(covert.Request{Port: o.Open, Time: t}, b)
		if err != nil {
			return err
		}
		carriers = covert.Split(msg)
		// Linux fills in an IPv4 ID of 0 itself, which would destroy two
		// bytes of the message: seal again a millisecond later.
		if !dst.Is4() || (nonZeroID(carriers[0]) && nonZeroID(carriers[1])) {
			break
		}
		t = t.Add(time.Millisecond)
	}
	raw, err := openRaw(dst)
	if err != nil {
		return err
	}
	defer raw.Close()
	send := func(from netip.Addr, dport uint16, c [covert.CarrierSize]byte) error {
		syn := covert.SYN{Src: from, Dst: dst, SrcPort: ephemeralPort(), DstPort: dport, Carrier: c, FlowLabelHigh4: randByte()}
		if o.Verbose != nil {
			fmt.Fprintf(o.Verbose, "SYN %v:%d → %v:%d\n", from, syn.SrcPort, dst, dport)
		}
		return raw.Send(syn.Build(shape))
	}
	// Decoys first and between: to other ports from this address, and to
	// the door's port from the other addresses (one each, so the server
	// never pairs them).
	var decoys []func() error
	for range o.Decoys {
		p := ephemeralPort()
		if p == o.Port {
			p++
		}
		decoys = append(decoys, func() error { return send(local, p, randomCarrier()) })
	}
	for _, from := range o.From {
		decoys = append(decoys, func() error { return send(from.Unmap(), o.Port, randomCarrier()) })
	}
	steps := make([]func() error, 0, len(decoys)+covert.SYNs)
	for i, c := range carriers {
		if i < len(decoys) {
			steps = append(steps, decoys[i])
		}
		steps = append(steps, func() error { return send(local, o.Port, c) })
	}
	for i := covert.SYNs; i < len(decoys); i++ {
		steps = append(steps, decoys[i])
	}
	for i, step := range steps {
		if i > 0 && o.Delay > 0 {
			time.Sleep(o.Delay)
		}
		if err := step(); err != nil {
			return fmt.Errorf("covert: sending a SYN (needs CAP_NET_RAW): %w", err)
		}
	}
	return nil
}

func nonZeroID(c [covert.CarrierSize]byte) bool { return c[8] != 0 || c[9] != 0 }

// ephemeralPort draws from Linux's default ip_local_port_range.
func ephemeralPort() uint16 {
	var b [2]byte
	rand.Read(b[:])
	return 32768 + binary.BigEndian.Uint16(b[:])%(60999-32768+1)
}

func randByte() byte {
	var b [1]byte
	rand.Read(b[:])
	return b[0]
}

func randomCarrier() (c [covert.CarrierSize]byte) {
	rand.Read(c[:])
	if c[8] == 0 && c[9] == 0 {
		c[9] = 1
	}
	return c
}
