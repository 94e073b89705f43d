// Package command runs knockd-style commands: a start command when a door
// opens and, optionally, a stop command a while later. Commands run through
// /bin/sh, as knockd's do (existing configurations rely on shell syntax),
// with %IP% replaced by the knocker's address and nothing else. A stop
// command is recorded in the state directory before its start command runs,
// so a restart or a crash of the daemon delays it at most until the daemon
// is back, and it never gets lost (knockd keeps it only in a forked child).
package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"postern/internal/atomicfile"
)

// Shell runs every command, as knockd's system(3) does.
const Shell = "/bin/sh"

// runTimeout bounds one command: a hung command must not pile up.
const runTimeout = time.Minute

// Expand replaces every %IP% in cmd with addr. The address comes from a
// parsed packet, so its text is only hex digits, dots and colons; an address
// with a zone (which could carry any text) is refused.
func Expand(cmd string, addr netip.Addr) (string, error) {
	if !addr.IsValid() || addr.Zone() != "" {
		return "", fmt.Errorf("refusing to put %q into a command", addr)
	}
	return strings.ReplaceAll(cmd, "%IP%", addr.Unmap().String()), nil
}

// Pending is a stop command waiting for its time.
type Pending struct {
	ID      uint64    `json:"id"`
	Door    string    `json:"door"`
	Addr    string    `json:"addr"`
	Command string    `json:"command"` // expanded
	Due     time.Time `json:"due"`
}

// Runner runs commands and keeps the pending stop commands in a file.
type Runner struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	pending map[uint64]Pending
	nextID  uint64
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// Open loads the pending stop commands from path (which need not exist) and
// schedules them: overdue ones run at once.
func Open(path string, log *slog.Logger) (*Runner, error) {
	r := &Runner{path: path, log: log, pending: make(map[uint64]Pending), stop: make(chan struct{})}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		var ps []Pending
		if err := json.Unmarshal(data, &ps); err != nil {
			return nil, fmt.Errorf("%s: corrupt pending-command state: %w", path, err)
		}
		for _, p := range ps {
			r.pending[p.ID] = p
			r.nextID = max(r.nextID, p.ID)
		}
	}
	for _, p := range r.pending {
		if late := time.Since(p.Due); late > 0 {
			log.Info("stop command overdue after restart", "door", p.Door, "src", p.Addr, "late", late.Round(time.Millisecond))
		}
		r.wg.Add(1)
		go r.runStop(p, nil)
	}
	return r, nil
}

// Pending returns the stop commands not yet run.
func (r *Runner) Pending() []Pending {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Pending, 0, len(r.pending))
	for _, p := range r.pending {
		out = append(out, p)
	}
	return out
}

// Run runs start for door with %IP% = addr, and, if stop is not empty, stop
// after delay. The stop command is on disk before start runs.
func (r *Runner) Run(door string, addr netip.Addr, start, stop string, delay time.Duration) error {
	startCmd, err := Expand(start, addr)
	if err != nil {
		return err
	}
	var p *Pending
	if stop != "" {
		stopCmd, err := Expand(stop, addr)
		if err != nil {
			return err
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return errors.New("command runner closed")
		}
		r.nextID++
		p = &Pending{ID: r.nextID, Door: door, Addr: addr.String(), Command: stopCmd, Due: time.Now().Add(delay)}
		r.pending[p.ID] = *p
		err = r.save()
		r.mu.Unlock()
		if err != nil {
			return fmt.Errorf("recording stop command: %w", err)
		}
	}
	started := make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if startCmd != "" {
			r.exec("start", door, addr.String(), startCmd)
		}
		close(started)
	}()
	if p != nil {
		r.wg.Add(1)
		go r.runStop(*p, started)
	}
	return nil
}

// runStop waits for p's time (and for its start command to finish, as
// knockd's child does), runs it and forgets it. If the runner closes first,
// p stays on disk for the next start.
func (r *Runner) runStop(p Pending, started <-chan struct{}) {
	defer r.wg.Done()
	if started != nil {
		select {
		case <-started:
		case <-r.stop:
			return
		}
	}
	t := time.NewTimer(time.Until(p.Due))
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.stop:
		return
	}
	r.exec("stop", p.Door, p.Addr, p.Command)
	r.mu.Lock()
	delete(r.pending, p.ID)
	err := r.save()
	r.mu.Unlock()
	if err != nil {
		r.log.Error("recording a stop command as done", "door", p.Door, "src", p.Addr, "err", err)
	}
}

func (r *Runner) exec(which, door, addr, cmd string) {
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, Shell, "-c", cmd)
	out, err := c.CombinedOutput()
	args := []any{"door", door, "src", addr, "command", cmd}
	if s := strings.TrimSpace(string(out)); s != "" {
		if len(s) > 300 {
			s = s[:300] + "…"
		}
		args = append(args, "output", s)
	}
	if err != nil {
		r.log.Error(which+" command failed", append(args, "err", err)...)
		return
	}
	r.log.Info(which+" command ran", args...)
}

func (r *Runner) save() error {
	ps := make([]Pending, 0, len(r.pending))
	for _, p := range r.pending {
		ps = append(ps, p)
	}
	data, err := json.MarshalIndent(ps, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(r.path, data, 0o600)
}

// Close stops waiting: running commands finish, pending stop commands stay
// recorded and run when the state is opened again.
func (r *Runner) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.stop)
	}
	r.mu.Unlock()
	r.wg.Wait()
}
