package server

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/postern/postern/config"
	"github.com/postern/postern/control"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
)

// answer is the daemon's side of the control socket: status, revoke and
// reload go through the ledger the daemon holds, never around it.
func (s *Server) answer(req control.Request) control.Response {
	cfg := s.pipe.Load().cfg
	base := control.Response{PID: os.Getpid(), Config: cfg.Path, Backend: string(cfg.Firewall.Backend)}
	switch req.Op {
	case control.OpStatus:
		gs, err := s.fw.List()
		if err != nil {
			base.Error = err.Error()
			return base
		}
		base.Grants = reportGrants(gs)
	case control.OpRevoke:
		gs, err := s.revoke(req.Addr, req.Port)
		if err != nil {
			base.Error = err.Error()
			return base
		}
		base.Grants = reportGrants(gs)
	case control.OpReload:
		if err := s.reloadFrom(req.Config); err != nil {
			base.Error = err.Error()
			return base
		}
		base.Message = "reloaded " + cfg.Path
	case control.OpStop:
		// The operator's word, logged as theirs; the answer goes out
		// before Run returns (Serve waits for it).
		s.log.Info("stopping", "by", cmp.Or(req.By, "the control socket"))
		s.stopRun()
		base.Message = "stopping"
	default:
		base.Error = fmt.Sprintf("unknown control operation %q", req.Op)
	}
	return base
}

func reportGrants(gs []firewall.Grant) []control.Grant {
	out := make([]control.Grant, 0, len(gs))
	for _, g := range gs {
		out = append(out, control.Grant{Address: g.Addr.String(), Port: g.Port.String(), Name: g.Name,
			To: g.Destination(), Mode: g.Mode(), ExpiresIn: g.Timeout.Round(time.Millisecond).Seconds()})
	}
	return out
}

// revoke closes the live grants of addr (on one port, if given) through
// the ledger, so that no restore brings them back, and logs it.
func (s *Server) revoke(addrText, portText string) ([]firewall.Grant, error) {
	addr, err := netip.ParseAddr(addrText)
	if err != nil {
		return nil, fmt.Errorf("%q is not an address", addrText)
	}
	var only *port.Spec
	if portText != "" {
		p, err := port.Parse(portText)
		if err != nil {
			return nil, err
		}
		only = &p
	}
	live, err := s.fw.List()
	if err != nil {
		return nil, err
	}
	var mine []firewall.Grant
	for _, g := range live {
		if g.Addr == addr.Unmap() && (only == nil || g.Port == *only) {
			mine = append(mine, g)
		}
	}
	if len(mine) == 0 {
		return nil, fmt.Errorf("no live grant for %s", strings.TrimSpace(addrText+" "+portText))
	}
	if err := s.fw.Revoke(mine); err != nil {
		return nil, err
	}
	for _, g := range mine {
		s.log.Info("revoked", "by", "postern revoke", "allow", g.Addr, "port", g.Port, "client", g.Name,
			"to", cmp.Or(g.Destination(), "this host"))
	}
	return mine, nil
}

// reloadFrom reloads the daemon's own configuration file. A command that
// checked another file is refused: the daemon would not read it.
func (s *Server) reloadFrom(checked string) error {
	path := s.cfg.Path
	if checked != "" && !sameFile(checked, path) {
		return fmt.Errorf("the daemon runs with %s, not %s: it reloads only its own file (restart it with -c %s to change files)",
			path, checked, checked)
	}
	next, err := config.Load(path)
	if err != nil {
		return err
	}
	return s.Reload(next)
}

func sameFile(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(sa, sb)
	}
	absA, _ := filepath.Abs(a)
	absB, _ := filepath.Abs(b)
	return absA == absB
}

// prune drops the live grants p does not permit (a client removed, a
// port no longer allowed) and logs each: access never outlives the
// configuration that allowed it.
func (s *Server) prune(p *policy.Policy, why string) {
	gone, err := s.fw.Prune(p.Permits)
	if err != nil {
		s.log.Error("removing grants the configuration no longer allows", "err", err)
		return
	}
	for _, g := range gone {
		s.log.Info("revoked", "by", why, "allow", g.Addr, "port", g.Port, "client", cmp.Or(g.Name, "-"),
			"reason", "no longer allowed by the configuration")
	}
}
