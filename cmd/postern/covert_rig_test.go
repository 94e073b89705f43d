package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postern/postern/covert"
	"github.com/postern/postern/internal/netnstest"
)

// tcpdump captures in a namespace into a pcap file until stopped.
type tcpdump struct {
	cmd  *exec.Cmd
	file string
	out  *netnstest.Output
}

func startTcpdump(t *testing.T, ns *netnstest.NS, file, filter string) *tcpdump {
	t.Helper()
	d := &tcpdump{file: file, out: netnstest.NewOutput()}
	d.cmd = ns.Command(t.Context(), "tcpdump", "-i", netnstest.Interface, "-n", "-U", "-w", file, filter)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.out.WaitFor(t, 5*time.Second, "listening on")
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	return d
}

// stop ends the capture and returns the IP packets it wrote.
func (d *tcpdump) stop(t *testing.T) [][]byte {
	t.Helper()
	time.Sleep(100 * time.Millisecond)
	d.cmd.Process.Signal(syscall.SIGINT)
	d.cmd.Wait()
	data, err := os.ReadFile(d.file)
	if err != nil {
		t.Fatal(err)
	}
	return readPcap(t, data)
}

// readPcap reads a classic pcap file of Ethernet frames (what tcpdump
// writes for a veth) and returns the IP packets.
func readPcap(t *testing.T, data []byte) [][]byte {
	t.Helper()
	if len(data) < 24 {
		t.Fatalf("pcap of %d bytes", len(data))
	}
	var bo binary.ByteOrder = binary.LittleEndian
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4, 0xa1b23c4d:
	default:
		bo = binary.BigEndian
	}
	if link := bo.Uint32(data[20:]); link != 1 {
		t.Fatalf("pcap link type %d, want Ethernet", link)
	}
	var out [][]byte
	for off := 24; off+16 <= len(data); {
		n := int(bo.Uint32(data[off+8:]))
		off += 16
		if off+n > len(data) || n < 14 {
			break
		}
		out = append(out, data[off+14:off+n])
		off += n
	}
	return out
}

// sendRawIP sends complete IP packets from the client namespace.
func (r *rig) sendRawIP(pkts ...[]byte) {
	r.t.Helper()
	if err := r.p.Client.Do(func() error {
		for _, p := range pkts {
			family, sa := unix.AF_INET, unix.Sockaddr(nil)
			if p[0]>>4 == 6 {
				family = unix.AF_INET6
				sa = &unix.SockaddrInet6{Addr: [16]byte(p[24:40])}
			} else {
				sa = &unix.SockaddrInet4{Addr: [4]byte(p[16:20])}
			}
			fd, err := unix.Socket(family, unix.SOCK_RAW, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			err = unix.Sendto(fd, p, 0, sa)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("sendto: %w", err)
			}
		}
		return nil
	}); err != nil {
		r.t.Fatal(err)
	}
}

// withSource rewrites an IPv4 TCP packet's source address and fixes both
// checksums: a captured SYN re-sent from another address.
func withSource(p []byte, src netip.Addr) []byte {
	q := append([]byte(nil), p...)
	a := src.As4()
	copy(q[12:16], a[:])
	ihl := int(q[0]&0x0f) * 4
	q[10], q[11] = 0, 0
	binary.BigEndian.PutUint16(q[10:], ^covert.Checksum(0, q[:ihl]))
	tcp := q[ihl:]
	tcp[16], tcp[17] = 0, 0
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(q[i:]))
	}
	sum += 6 + uint32(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:], ^covert.Checksum(sum, tcp))
	return q
}

// synShape blanks what may differ between two SYNs of this host — the
// covert carriers (IP ID or flow label, sequence number, TCP timestamp
// value), the source port and the checksums — and returns the rest.
func synShape(t *testing.T, p []byte) []byte {
	t.Helper()
	q := append([]byte(nil), p...)
	var tcp []byte
	if q[0]>>4 == 4 {
		ihl := int(q[0]&0x0f) * 4
		q[4], q[5] = 0, 0   // IP ID
		q[10], q[11] = 0, 0 // header checksum
		tcp = q[ihl:]
	} else {
		q[1] &= 0xf0 // flow label
		q[2], q[3] = 0, 0
		tcp = q[40:]
	}
	tcp[0], tcp[1] = 0, 0 // source port
	copy(tcp[4:8], make([]byte, 4))
	tcp[16], tcp[17] = 0, 0 // checksum
	opts := tcp[20 : int(tcp[12]>>4)*4]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0:
			i = len(opts)
		case 1:
			i++
		default:
			if opts[i] == 8 && i+6 <= len(opts) {
				copy(opts[i+2:i+6], make([]byte, 4)) // TSval
			}
			if i+1 >= len(opts) || opts[i+1] < 2 {
				t.Fatalf("bad TCP options %x", opts)
			}
			i += int(opts[i+1])
		}
	}
	return q
}
