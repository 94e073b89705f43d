//go:build linux

// Package control is the daemon's local control socket: the one way other
// postern processes (status, revoke, reload) read or change what the
// daemon holds, so that the daemon's ledger stays the one authority over
// live grants. It is a Unix stream socket per network namespace, mode
// 0600, and the daemon answers only peers of its own user or root
// (SO_PEERCRED). One JSON request and one JSON response per connection.
// It never decides anything itself: the daemon's Handler does.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postern/postern/internal/pidlock"
)

// Operations.
const (
	OpStatus = "status"
	OpRevoke = "revoke"
	OpReload = "reload"
	OpStop   = "stop" // the daemon stops (postern cleanup --force, before it removes the rules)
)

// Request is what a command asks the daemon.
type Request struct {
	Op string `json:"op"`
	// Addr and Port select the grants to revoke (Port empty: all of Addr's).
	Addr string `json:"addr,omitempty"`
	Port string `json:"port,omitempty"`
	// Config is the file the reloading command checked; the daemon
	// refuses if it is not the daemon's own.
	Config string `json:"config,omitempty"`
	// By names the command that asks, for the daemon's log.
	By string `json:"by,omitempty"`
}

// Grant is a live grant as the daemon reports it.
type Grant struct {
	Address   string  `json:"address"`
	Port      string  `json:"port"`
	Name      string  `json:"name,omitempty"`
	To        string  `json:"to,omitempty"`
	Mode      string  `json:"mode,omitempty"` // "once", "idle 2m0s": how it ends besides its time
	ExpiresIn float64 `json:"expires_in_seconds"`
}

// Response is the daemon's answer. Error is set when it refused; the
// command then exits non-zero with it.
type Response struct {
	Error   string  `json:"error,omitempty"`
	Message string  `json:"message,omitempty"`
	PID     int     `json:"pid,omitempty"`
	Config  string  `json:"config,omitempty"`
	Backend string  `json:"backend,omitempty"`
	Grants  []Grant `json:"grants,omitempty"`
}

// Handler answers one request.
type Handler func(Request) Response

// ErrNoDaemon is returned by Call when no daemon listens in this network
// namespace.
var ErrNoDaemon = errors.New("no postern daemon listens on the control socket")

// Path is this network namespace's control socket.
func Path() (string, error) { return pidlock.RuntimePath("control", ".sock") }

// Listen creates the socket at path, replacing a stale one (the caller
// holds the daemon's pid lock, so no live daemon owns it).
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(pidlock.Dir, 0o755); err != nil {
		return nil, err
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	os.Remove(path)
	old := unix.Umask(0o177) // the socket is created 0600
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

// Serve answers requests on ln until ctx ends, then closes ln and waits
// for the requests in progress.
func Serve(ctx context.Context, ln *net.UnixListener, handle Handler) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("control socket: %w", err)
		}
		wg.Go(func() { serveOne(c, handle) })
	}
}

func serveOne(c *net.UnixConn, handle Handler) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	enc := json.NewEncoder(c)
	if err := peerAllowed(c); err != nil {
		enc.Encode(Response{Error: err.Error()})
		return
	}
	var req Request
	if err := json.NewDecoder(io.LimitReader(c, 1<<16)).Decode(&req); err != nil {
		enc.Encode(Response{Error: "bad request: " + err.Error()})
		return
	}
	enc.Encode(handle(req))
}

// peerAllowed admits root and the daemon's own user only: the socket's
// mode already says so, the credentials make sure of it.
func peerAllowed(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return cerr
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("uid %d may not use the control socket (root only)", cred.Uid)
	}
	return nil
}

// Call sends req to the daemon of this network namespace and returns its
// answer; ErrNoDaemon if none listens. A refusal is an error with the
// daemon's words.
func Call(req Request) (Response, error) {
	path, err := Path()
	if err != nil {
		return Response{}, err
	}
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) {
			return Response{}, ErrNoDaemon
		}
		return Response{}, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, fmt.Errorf("control socket: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("control socket: no answer from the daemon: %w", err)
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}
