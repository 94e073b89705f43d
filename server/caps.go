package server

import (
	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// dropNetRaw removes CAP_NET_RAW from the daemon's effective and permitted
// sets on every thread (libcap's psx does the all-threads part) once the
// capture sockets are open: they stay usable, and a compromised daemon can
// no longer open new raw sockets. CAP_NET_ADMIN stays, because netlink checks
// the sender's capability on every message. It reports whether it dropped
// anything; a process that never had CAP_NET_RAW is left alone.
func dropNetRaw() (bool, error) {
	c := cap.GetProc()
	have, err := c.GetFlag(cap.Permitted, cap.NET_RAW)
	if err != nil || !have {
		return false, err
	}
	for _, f := range []cap.Flag{cap.Effective, cap.Permitted, cap.Inheritable} {
		if err := c.SetFlag(f, false, cap.NET_RAW); err != nil {
			return false, err
		}
	}
	return true, c.SetProc()
}
