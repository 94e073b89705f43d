package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/postern/postern/command"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
)

// Log messages, shared by the daemon's lines and the knockd LogFile, which
// turns some into knockd's own (lineHandler; TestKnockdLogVocabulary holds
// them together).
const (
	MsgReady    = "ready"
	MsgStopped  = "stopped"
	MsgGranted  = "granted"
	MsgRefused  = "refused"
	MsgReloaded = "reloaded"
)

// Outcomes that are not a decoder's refusal reason.
const (
	mGranted       = "granted"
	mClosed        = "closed"
	mMalformed     = "malformed packet"
	mCaptureError  = "capture error"
	mFirewallError = "firewall error"
	mCommandNotRun = "command not run"
	mPendingFull   = "commands pending"
	mNotLocal      = "not for this host"
	mNotOwned      = "nothing of its own to close"
)

// decided takes every verdict of every decoder — from the capture
// goroutine, the expiry timer and the GnuPG workers, so it is safe for
// concurrent use — and turns it into one log line and one counter:
//
//	msg=granted language=… src=… client=… allow=… ports=… duration=… [commands=N] …
//	msg=refused language=… src=… reason=… [client=…] …
func (s *Server) decided(v *policy.Verdict) {
	switch {
	case v.Note != "":
		s.note(v)
	case v.Reason != "":
		s.refuse(v)
	default:
		s.apply(v)
	}
}

// apply asks policy, then installs the grants and runs the commands.
func (s *Server) apply(v *policy.Verdict) {
	r := &v.Request
	dec, refusal := s.pipe.Load().policy.Decide(r)
	if refusal != "" {
		v.Reason = string(refusal)
		extra := []slog.Attr{slog.String("ports", port.Join(r.Ports)), slog.Duration("duration", r.Duration)}
		if r.To.IsValid() {
			extra = append(extra, slog.String("to", r.To.String()))
		}
		s.refuse(v, extra...)
		return
	}
	if len(dec.Revokes) > 0 {
		s.close(v, dec.Revokes)
		return
	}
	for _, c := range dec.Commands {
		if c.Stop == "" {
			continue
		}
		if err := s.state.commands().Admit(commandName(v), c.Addr); err != nil {
			// A flood of (spoofed) door completions meets the bound on
			// pending stop commands: refused, counted, logged in brief.
			v.Reason = mPendingFull
			s.refuse(v, slog.String("detail", err.Error()))
			return
		}
	}
	renewed := 0
	if len(dec.Grants) > 0 {
		var err error
		if renewed, err = s.fw.GrantRenew(dec.Grants); err != nil {
			s.metrics.inc(outcome{v.Language, mFirewallError})
			s.log.Error("grant failed", "language", v.Language, "src", v.Src, "client", v.Client, "err", err)
			return
		}
	}
	for _, c := range dec.Commands {
		how := command.How{NoShell: c.NoShell, User: c.User, Group: c.Group}
		if err := s.state.commands().RunExpanded(commandName(v), c.Addr, c.Start, c.Stop, c.StopAfter, how); err != nil {
			if ok, suppressed := s.count(outcome{v.Language, mCommandNotRun}); ok {
				s.log.Error("command not run", "language", v.Language, "src", v.Src, "client", v.Client, "err", err,
					"suppressed", suppressed)
			}
			return
		}
	}
	s.metrics.inc(outcome{v.Language, mGranted})
	s.metrics.client(v.Language, v.Client, true)
	args := []any{"language", v.Language, "src", v.Src, "client", v.Client}
	if len(dec.Grants) > 0 {
		g := dec.Grants[0]
		args = append(args, "allow", g.Addr, "ports", port.Join(r.Ports), "duration", g.Timeout)
		if !r.UseSource && g.Addr != v.Src.Unmap() {
			// The knock asks for another address than it came from:
			// usually a client behind NAT granting its private address
			// (the door then stays shut for its real source; knock with
			// --allow auto), or a knock sent on another's behalf.
			args = append(args, "nat", true)
		}
		if to := g.Destination(); to != "" {
			args = append(args, "to", to) // a gateway grant: where it leads
		}
		if m := g.Mode(); m != "" {
			args = append(args, "mode", m) // once, or idle-ended
		}
	}
	if len(dec.Commands) > 0 {
		args = append(args, "commands", len(dec.Commands))
	}
	for _, a := range v.Attrs() {
		args = append(args, a)
	}
	if renewed > 0 && renewed == len(dec.Grants) {
		// A knock for a grant still live: extended, never doubled. Still
		// msg=granted — the knock succeeded, and whatever watches the log
		// for that (knockd's OPEN SESAME, fail2ban filters) must see it.
		args = append(args, "renewed", true)
	}
	s.log.Info(MsgGranted, args...)
}

// close revokes grants a client asked to close (its "close" action).
func (s *Server) close(v *policy.Verdict, gs []policy.Grant) {
	// A client closes its own grants: the same port of the same address
	// granted to another client stays open.
	gs, err := s.fw.RevokeOwned(gs, policy.Owner(v.Language, v.Client))
	if err != nil {
		s.metrics.inc(outcome{v.Language, mFirewallError})
		s.log.Error("close failed", "language", v.Language, "src", v.Src, "client", v.Client, "err", err)
		return
	}
	if len(gs) == 0 {
		v.Reason = mNotOwned
		s.refuse(v, slog.String("ports", port.Join(v.Request.Ports)))
		return
	}
	s.metrics.inc(outcome{v.Language, mClosed})
	s.log.Info("closed", "language", v.Language, "src", v.Src, "client", v.Client, "allow", gs[0].Addr,
		"ports", port.Join(v.Request.Ports))
}

// commandName is what the runner and its log lines call a knock's
// commands: a door's name, as knockd's log lines have it, or the language
// and the client.
func commandName(v *policy.Verdict) string {
	if v.Language == policy.Door {
		return v.Client
	}
	return string(v.Language) + " " + v.Client
}

// count counts a decision of this kind and says whether to log it: each
// kind logs a burst, then about ten lines a second, and the next line
// carries how many were held back. Every path that refuses or fails uses
// it, so a flood of any one kind is counted in full and logged in brief.
func (s *Server) count(o outcome) (log bool, suppressed int) {
	s.metrics.inc(o)
	return s.logs.allow(o, time.Now())
}

// refuse counts a refusal and logs it, unless its reason is flooding;
// nothing is built for a line that is not written.
func (s *Server) refuse(v *policy.Verdict, extra ...slog.Attr) {
	s.metrics.client(v.Language, v.Client, false)
	ok, suppressed := s.count(outcome{v.Language, v.Reason})
	if !ok {
		return
	}
	args := []any{"language", v.Language, "src", v.Src, "reason", v.Reason}
	if v.Client != "" {
		args = append(args, "client", v.Client)
	}
	for _, a := range v.Attrs() {
		args = append(args, a)
	}
	for _, a := range extra {
		args = append(args, a)
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.log.Warn(MsgRefused, args...)
}

// note logs a step that decides nothing (a door's progress) at debug
// level; a knockd LogFile gets every one as its "Stage N" line. A flood of
// spoofed first hits must not become a flood of disk writes: rate-limited.
func (s *Server) note(v *policy.Verdict) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	if ok, _ := s.logs.allow(outcome{v.Language, v.Note}, time.Now()); ok {
		args := []any{"language", v.Language, "src", v.Src, "client", v.Client}
		for _, a := range v.Attrs() {
			args = append(args, a)
		}
		s.log.Debug(v.Note, args...)
	}
}
