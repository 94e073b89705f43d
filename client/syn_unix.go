//go:build unix

package client

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

// sendSYN sends one TCP SYN to a:port and nothing more: connect(2) on a
// non-blocking socket sends the SYN before it returns EINPROGRESS, and
// closing a socket in SYN-SENT sends nothing. One hit, one SYN, as with
// knock(1).
func sendSYN(a netip.Addr, p uint16) error {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(p), Addr: a.As16()})
	if a.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(p), Addr: a.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return err
	}
	return nil
}
