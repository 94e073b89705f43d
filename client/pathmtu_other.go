//go:build !linux

package client

import "net"

// forSmallPaths is a Linux refinement (see pathmtu_linux.go); elsewhere a
// knock larger than a path's MTU relies on the system's path MTU discovery,
// and --wait knocks again once it has learnt the path.
func forSmallPaths(net.Conn, int) {}

// lostToPathMTU: see pathmtu_linux.go.
func lostToPathMTU(net.Conn, int) bool { return false }
