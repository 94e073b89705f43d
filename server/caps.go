package server

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
	"kernel.org/pub/linux/libs/security/libcap/psx"

	"github.com/postern/postern/config"
	"github.com/postern/postern/firewall/mode"
	"github.com/postern/postern/language"
)

// privileges says what the daemon keeps once its capture sockets are open.
type privileges struct {
	keep       []cap.Value // effective and permitted, for the daemon itself
	bound      []cap.Value // the bounding set: the most any child can get
	noNewPrivs bool        // children never gain privileges (nothing they run needs any)
}

// privilegesFor derives the privileges from the configuration:
//   - CAP_NET_ADMIN always: netlink checks the sender on every message;
//   - CAP_SETUID, CAP_SETGID and CAP_KILL while commands run as another
//     user or group (fwknop CMD_EXEC_USER/GROUP): set in the child after
//     fork, and to kill their process groups on timeout;
//   - in the bounding set only: CAP_NET_RAW with the iptables backend (the
//     legacy iptables programs it runs open raw sockets);
//   - no_new_privs unless commands run (knockd-style commands may call
//     programs that rely on privileges; gpg and iptables do not).
func privilegesFor(cfg *config.Config) privileges {
	p := privileges{keep: []cap.Value{cap.NET_ADMIN}}
	if commandIdentities(cfg) {
		p.keep = append(p.keep, cap.SETUID, cap.SETGID, cap.KILL)
	}
	p.bound = append(p.bound, p.keep...)
	if cfg.Firewall.Backend == mode.IPTables {
		p.bound = append(p.bound, cap.NET_RAW)
	}
	p.noNewPrivs = !language.NeedsCommands(cfg) && cfg.Firewall.Backend != mode.IPTables
	return p
}

func commandIdentities(cfg *config.Config) bool {
	if cfg.Fwknop == nil {
		return false
	}
	for _, st := range cfg.Fwknop.Stanzas {
		if st.EnableCmdExec && (st.CmdExecUser != "" || st.CmdExecGroup != "") {
			return true
		}
	}
	return false
}

// drop lowers every thread's capabilities (libcap's psx does the
// all-threads part) to p: the bounding set first (it needs CAP_SETPCAP,
// which goes next), then the effective, permitted and inheritable sets,
// then no_new_privs. The capture sockets opened before stay usable. A
// process that holds none of what it would drop is left alone, so the
// daemon also runs unprivileged (capture = "udp", backend = "none").
func (p privileges) drop() (bool, error) {
	c := cap.GetProc()
	if have, err := c.GetFlag(cap.Effective, cap.SETPCAP); err == nil && have {
		for v := cap.Value(0); v < cap.MaxBits(); v++ {
			if !contains(p.bound, v) {
				if err := cap.DropBound(v); err != nil {
					return false, fmt.Errorf("bounding set: %v: %w", v, err)
				}
			}
		}
	}
	want := cap.NewSet()
	for _, v := range p.keep {
		if have, _ := c.GetFlag(cap.Permitted, v); have {
			want.SetFlag(cap.Permitted, true, v)
			want.SetFlag(cap.Effective, true, v)
		}
	}
	changed := true
	if diff, err := c.Cf(want); err == nil && diff == 0 {
		changed = false
	} else if err := want.SetProc(); err != nil {
		return false, err
	}
	if p.noNewPrivs {
		if _, _, errno := psx.Syscall3(syscall.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); errno != 0 {
			return changed, errors.New("no_new_privs: " + errno.Error())
		}
	}
	return changed, nil
}

func contains(vs []cap.Value, v cap.Value) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}
