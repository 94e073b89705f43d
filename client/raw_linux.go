package client

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// rawIP sends whole IP packets (header included) to one address.
type rawIP struct {
	fd int
	sa unix.Sockaddr
}

// openRaw opens a raw socket for packets to dst. IPPROTO_RAW implies that
// we write the IP header ourselves (IPv4: IP_HDRINCL; IPv6: IPV6_HDRINCL).
func openRaw(dst netip.Addr) (*rawIP, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: dst.As16()})
	if dst.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: dst.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("covert: raw socket (needs CAP_NET_RAW): %w", err)
	}
	return &rawIP{fd: fd, sa: sa}, nil
}

func (r *rawIP) Send(pkt []byte) error { return unix.Sendto(r.fd, pkt, 0, r.sa) }

func (r *rawIP) Close() error { return unix.Close(r.fd) }
