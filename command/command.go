//go:build unix

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
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postern/postern/internal/atomicfile"
)

// The log messages of a command's run: "start command ran", "stop command
// failed", … — the knockd LogFile turns the ran and failed ones into
// knockd's "running command" lines.
const (
	Ran    = "command ran"
	Failed = "command failed"
	NotRun = "command not run"
)

// Message is the log message for which side ("start" or "stop") and what
// happened (Ran, Failed, NotRun).
func Message(which, what string) string { return which + " " + what }

// Shell runs every command, as knockd's system(3) does.
const Shell = "/bin/sh"

// runTimeout bounds one command: a hung command must not pile up.
const runTimeout = time.Minute

// How says how a command runs. The zero value is knockd's way: through
// /bin/sh, as the daemon's user.
type How struct {
	// NoShell runs the command as an argument vector split on white space
	// (quotes group words), never through a shell: fwknop's way, so that an
	// address or port in it can never become shell syntax. A command that
	// wants a shell says so itself ("/bin/sh -c '…'").
	NoShell bool `json:"no_shell,omitempty"`
	// User and Group run the command with another identity (fwknop's
	// CMD_EXEC_USER / CMD_EXEC_GROUP): names looked up when it runs.
	User  string `json:"user,omitempty"`
	Group string `json:"group,omitempty"`
}

// Pending is a stop command waiting for its time.
type Pending struct {
	ID      uint64    `json:"id"`
	Door    string    `json:"door"`
	Addr    string    `json:"addr"`
	Command string    `json:"command"` // expanded
	Due     time.Time `json:"due"`
	How     How       `json:"how,omitzero"`
}

// Bounds on pending stop commands: a flood of spoofed door completions
// (door sequences are not authenticated) must not grow the journal, the
// timers or the processes without limit.
const (
	MaxPending        = 10_000 // in all
	MaxPendingPerDoor = 1_000
	// MaxPendingPerSource: knockd runs the start command for every
	// completed sequence and a stop for each, so a person knocking again
	// while a stop is pending gets both; a handful is what a person does.
	MaxPendingPerSource = 16
)

// Refusals of RunExpanded when a bound is reached.
var (
	ErrPendingFull   = errors.New("too many stop commands pending")
	ErrPendingSource = errors.New("too many stop commands for this address and door are pending")
)

// Runner runs commands and keeps the pending stop commands in a journal:
// one appended, synced line per new stop command ("+{json}") and per stop
// command done ("-ID"), rewritten compactly from the stop side when it has
// grown to twice what is live, so adding one costs one small write whatever
// the number pending.
type Runner struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	pending map[uint64]Pending
	bySrc   map[string]int // door + "\x00" + addr → stop commands pending
	perDoor map[string]int
	journal *os.File
	lines   int // in the journal
	nextID  uint64
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup

	ctx    context.Context // ends at Close: running commands are killed
	cancel context.CancelFunc

	// lingering are the process groups of commands that exited leaving a
	// child in the background ("… &", as knockd configurations often end):
	// Close kills them, so nothing a door started outlives the daemon.
	lingering map[int]bool
}

// Open loads the pending stop commands from path (which need not exist) and
// schedules them: overdue ones run at once.
func Open(path string, log *slog.Logger) (*Runner, error) {
	r := &Runner{path: path, log: log, pending: make(map[uint64]Pending), bySrc: map[string]int{},
		perDoor: map[string]int{}, stop: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if err := r.load(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	err := r.compact()
	r.mu.Unlock()
	if err != nil {
		return nil, err
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

// load reads the journal (or the JSON array older versions wrote).
func (r *Runner) load() error {
	data, err := os.ReadFile(r.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	}
	corrupt := func(line int, err error) error {
		return fmt.Errorf("%s:%d: corrupt pending-command journal: %v", r.path, line, err)
	}
	if len(data) > 0 && data[0] == '[' {
		var ps []Pending
		if err := json.Unmarshal(data, &ps); err != nil {
			return corrupt(1, err)
		}
		for _, p := range ps {
			r.track(p)
		}
		return nil
	}
	for n, line := range strings.Split(string(data), "\n") {
		switch {
		case line == "":
		case line[0] == '+':
			var p Pending
			if err := json.Unmarshal([]byte(line[1:]), &p); err != nil {
				return corrupt(n+1, err)
			}
			r.track(p)
		case line[0] == '-':
			id, err := strconv.ParseUint(line[1:], 10, 64)
			if err != nil {
				return corrupt(n+1, err)
			}
			r.untrack(id)
		default:
			return corrupt(n+1, errors.New("want +{…} or -ID"))
		}
	}
	return nil
}

func srcKey(door, addr string) string { return door + "\x00" + addr }

func (r *Runner) track(p Pending) {
	r.pending[p.ID] = p
	r.bySrc[srcKey(p.Door, p.Addr)]++
	r.perDoor[p.Door]++
	r.nextID = max(r.nextID, p.ID)
}

func (r *Runner) untrack(id uint64) {
	p, ok := r.pending[id]
	if !ok {
		return
	}
	delete(r.pending, id)
	if k := srcKey(p.Door, p.Addr); r.bySrc[k] <= 1 {
		delete(r.bySrc, k)
	} else {
		r.bySrc[k]--
	}
	if r.perDoor[p.Door]--; r.perDoor[p.Door] <= 0 {
		delete(r.perDoor, p.Door)
	}
}

// appendLine writes one journal line and syncs it; r.mu is held.
func (r *Runner) appendLine(line string) error {
	if r.journal == nil {
		f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		r.journal = f
	}
	if _, err := r.journal.WriteString(line + "\n"); err != nil {
		return err
	}
	r.lines++
	return r.journal.Sync()
}

// compact rewrites the journal with only the live entries, atomically;
// r.mu is held.
func (r *Runner) compact() error {
	var b strings.Builder
	for _, p := range r.pending {
		line, err := json.Marshal(p)
		if err != nil {
			return err
		}
		b.WriteString("+" + string(line) + "\n")
	}
	if err := atomicfile.Write(r.path, []byte(b.String()), 0o600); err != nil {
		return err
	}
	if r.journal != nil {
		r.journal.Close()
		r.journal = nil
	}
	r.lines = len(r.pending)
	return nil
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
// after delay, both through /bin/sh. The stop command is on disk before
// start runs.
func (r *Runner) Run(door string, addr netip.Addr, start, stop string, delay time.Duration) error {
	startCmd, err := Expand(start, addr)
	if err != nil {
		return err
	}
	stopCmd := ""
	if stop != "" {
		if stopCmd, err = Expand(stop, addr); err != nil {
			return err
		}
	}
	return r.RunExpanded(door, addr, startCmd, stopCmd, delay, How{})
}

// Admit says whether a stop command for door and addr would be accepted
// now (ErrPendingFull, ErrPendingSource), so a caller can refuse a knock
// before acting on it.
func (r *Runner) Admit(door string, addr netip.Addr) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case len(r.pending) >= MaxPending || r.perDoor[door] >= MaxPendingPerDoor:
		return ErrPendingFull
	case r.bySrc[srcKey(door, addr.String())] >= MaxPendingPerSource:
		return ErrPendingSource
	}
	return nil
}

// RunExpanded is Run for commands whose placeholders the caller has already
// replaced (fwknop's $IP, $PORT, …), run as how says.
func (r *Runner) RunExpanded(door string, addr netip.Addr, startCmd, stopCmd string, delay time.Duration, how How) error {
	var p *Pending
	if stopCmd != "" {
		r.mu.Lock()
		var err error
		switch {
		case r.closed:
			err = errors.New("command runner closed")
		case len(r.pending) >= MaxPending || r.perDoor[door] >= MaxPendingPerDoor:
			err = ErrPendingFull
		case r.bySrc[srcKey(door, addr.String())] >= MaxPendingPerSource:
			err = ErrPendingSource
		}
		if err != nil {
			r.mu.Unlock()
			return err
		}
		p = &Pending{ID: r.nextID + 1, Door: door, Addr: addr.String(), Command: stopCmd, Due: time.Now().Add(delay), How: how}
		line, err := json.Marshal(p)
		if err == nil {
			err = r.appendLine("+" + string(line))
		}
		if err == nil {
			r.nextID++
			r.track(*p)
		}
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
			r.exec("start", door, addr.String(), startCmd, how)
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
	r.exec("stop", p.Door, p.Addr, p.Command, p.How)
	r.mu.Lock()
	r.untrack(p.ID)
	err := r.appendLine("-" + strconv.FormatUint(p.ID, 10))
	if err == nil && r.lines > 2*len(r.pending)+64 {
		err = r.compact() // here, on the stop side, not when a door opens
	}
	r.mu.Unlock()
	if err != nil {
		r.log.Error("recording a stop command as done", "door", p.Door, "src", p.Addr, "err", err)
	}
}

func (r *Runner) exec(which, door, addr, cmd string, how How) {
	args := []any{"door", door, "src", addr, "command", cmd}
	c, err := command(cmd, how)
	if err != nil {
		r.log.Error(Message(which, NotRun), append(args, "err", err)...)
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, runTimeout)
	defer cancel()
	c = withContext(ctx, c)
	var out boundedBuffer
	c.Stdout, c.Stderr = &out, &out
	err = c.Run()
	if c.Process != nil && syscall.Kill(-c.Process.Pid, 0) == nil {
		// It exited; a child it started in the background goes on, as
		// with knockd — until the daemon stops.
		r.linger(c.Process.Pid)
		args = append(args, "background", "still running")
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		if len(s) > 300 {
			s = s[:300] + "…"
		}
		args = append(args, "output", s)
	}
	if err != nil {
		r.log.Error(Message(which, Failed), append(args, "err", err)...)
		return
	}
	r.log.Info(Message(which, Ran), args...)
}

// linger records the process group of a command whose children live on,
// forgetting groups that have emptied since.
func (r *Runner) linger(pgid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lingering == nil {
		r.lingering = map[int]bool{}
	}
	for g := range r.lingering {
		if syscall.Kill(-g, 0) != nil {
			delete(r.lingering, g)
		}
	}
	r.lingering[pgid] = true
}

// Close stops waiting: running commands are killed with their process
// groups, and so are the background children of commands that finished;
// pending stop commands stay recorded and run when the state is opened
// again.
func (r *Runner) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.stop)
		r.cancel()
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	for g := range r.lingering {
		syscall.Kill(-g, syscall.SIGKILL)
	}
	clear(r.lingering)
	r.mu.Unlock()
	r.mu.Lock()
	if r.journal != nil {
		r.journal.Close()
		r.journal = nil
	}
	r.mu.Unlock()
}

// boundedBuffer keeps the first outputLimit bytes of a command's output
// and discards the rest, so a chatty command cannot grow the daemon.
type boundedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const outputLimit = 4096

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := outputLimit - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// command builds the process for cmd.
func command(cmd string, how How) (*exec.Cmd, error) {
	var c *exec.Cmd
	if how.NoShell {
		argv, err := SplitArgs(cmd)
		if err != nil {
			return nil, err
		}
		if len(argv) == 0 {
			return nil, errors.New("empty command")
		}
		c = exec.Command(argv[0], argv[1:]...)
	} else {
		c = exec.Command(Shell, "-c", cmd)
	}
	if how.User != "" || how.Group != "" {
		cred, err := credential(how.User, how.Group)
		if err != nil {
			return nil, err
		}
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return c, nil
}

// withContext runs c in a process group of its own that a timeout or
// shutdown kills whole. A command that leaves a child holding its output
// (knockd configs often end in "&") is waited for only briefly after it
// exits: the child goes on, the daemon does not wait for it.
func withContext(ctx context.Context, c *exec.Cmd) *exec.Cmd {
	cc := exec.CommandContext(ctx, c.Path, c.Args[1:]...)
	cc.Env, cc.Dir = c.Env, c.Dir
	cc.Err = c.Err
	attr := syscall.SysProcAttr{}
	if c.SysProcAttr != nil {
		attr = *c.SysProcAttr
	}
	attr.Setpgid = true
	cc.SysProcAttr = &attr
	cc.Cancel = func() error { return syscall.Kill(-cc.Process.Pid, syscall.SIGKILL) }
	cc.WaitDelay = time.Second
	return cc
}

// credential looks up a user (and its primary group) and an optional group.
func credential(userName, groupName string) (*syscall.Credential, error) {
	// The supplementary groups are the user's own, never the daemon's
	// (root's groups must not follow a command into another identity).
	cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), Groups: []uint32{}}
	if userName != "" {
		u, err := user.Lookup(userName)
		if err != nil {
			return nil, err
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred.Uid, cred.Gid = uint32(uid), uint32(gid)
		ids, err := u.GroupIds()
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if n, err := strconv.ParseUint(id, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	if groupName != "" {
		// A number is a group id (fwknop's CMD_EXEC_GROUP, already
		// resolved); a name is looked up.
		gid, err := strconv.ParseUint(groupName, 10, 32)
		if err != nil {
			g, lerr := user.LookupGroup(groupName)
			if lerr != nil {
				return nil, lerr
			}
			gid, _ = strconv.ParseUint(g.Gid, 10, 32)
		}
		cred.Gid = uint32(gid)
	}
	return cred, nil
}

// SplitArgs splits a command line on white space; single and double quotes
// group words (without any expansion), a backslash escapes the next byte.
func SplitArgs(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, errors.New("unterminated quote in command")
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}
