package client

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// minPathMTU is the smallest MTU an IPv6 path may have; IPv4 paths are
// assumed to carry as much (RFC 791 guarantees only 576, which no knock
// fits unfragmented anyway).
const minPathMTU = 1280

// forSmallPaths prepares a knock of size bytes (UDP payload) for a path
// whose MTU is smaller than the local link's. Over IPv4 it leaves without
// "don't fragment", so a router on the way fragments it instead of
// dropping it. IPv6 routers never fragment: they answer "packet too big",
// and the kernel fragments what it sends next; lostToPathMTU tells when
// that happened to the knock just sent. Knocks that fit any path are left
// alone.
func forSmallPaths(conn net.Conn, size int) {
	uc, ok := conn.(*net.UDPConn)
	if !ok || size+48 <= minPathMTU || !remoteIs4(uc) {
		return
	}
	if raw, err := uc.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
		})
	}
}

func remoteIs4(uc *net.UDPConn) bool {
	a, ok := uc.RemoteAddr().(*net.UDPAddr)
	return ok && a.AddrPort().Addr().Unmap().Is4()
}

// lostToPathMTU reports, for an IPv6 knock of size bytes just sent
// unfragmented, whether a router answered "packet too big" (the path MTU
// the kernel holds for the server fell below the packet) within a short
// wait: then the knock was dropped on the way, and one sent now goes out
// in fragments. Knocks the kernel fragmented already, or that fit any
// path, are not waited for.
func lostToPathMTU(conn net.Conn, size int) bool {
	uc, ok := conn.(*net.UDPConn)
	if !ok || size+48 <= minPathMTU || remoteIs4(uc) {
		return false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	pathMTU := func() int {
		mtu := 0
		raw.Control(func(fd uintptr) { mtu, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU) })
		return mtu
	}
	for deadline := time.Now().Add(pathMTUWait); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if mtu := pathMTU(); mtu > 0 && mtu < size+48 {
			return true
		}
	}
	return false
}

// pathMTUWait bounds how long a large IPv6 knock waits for "packet too
// big": a router's answer comes back within the round trip to it.
const pathMTUWait = 150 * time.Millisecond
