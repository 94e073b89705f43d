// Package pidlock tells whether a postern daemon runs in this network
// namespace. The daemon holds an exclusive flock on a file named after the
// namespace for its whole life; the kernel drops the lock when the process
// dies, however it dies, so a stale file never claims a daemon that is gone.
// Firewall state is per network namespace, so that is what "running on this
// host" means for cleanup and status.
package pidlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is where the lock files live (systemd's RuntimeDirectory=postern).
var Dir = "/run/postern"

// Lock is a held daemon lock.
type Lock struct{ f *os.File }

func path() (string, error) { return RuntimePath("daemon", ".pid") }

// RuntimePath is where a daemon of this network namespace keeps a runtime
// file: Dir/KIND-netns-INODE+SUFFIX (the control socket, the pid lock).
func RuntimePath(kind, suffix string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return "", fmt.Errorf("network namespace: %w", err)
	}
	return filepath.Join(Dir, kind+"-netns-"+strconv.FormatUint(st.Ino, 10)+suffix), nil
}

// Acquire takes the lock for this process, or says which process has it.
func Acquire() (*Lock, error) {
	p, err := path()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	// status and cleanup hold the lock shared for an instant to test it:
	// try for a moment before calling it another daemon's.
	var err2 error
	for range 50 {
		if err2 = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err2, unix.EWOULDBLOCK) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := err2; err != nil {
		pid, _ := readPID(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another postern daemon (pid %d) runs in this network namespace", pid)
		}
		return nil, err
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &Lock{f: f}, nil
}

// Release gives the lock up.
func (l *Lock) Release() {
	if l == nil {
		return
	}
	os.Remove(l.f.Name())
	l.f.Close()
}

// Running returns the pid of the daemon that holds the lock, or 0 if none.
func Running() (int, error) {
	p, err := path()
	if err != nil {
		return 0, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return 0, nil // nobody holds it: the daemon is gone
	} else if !errors.Is(err, unix.EWOULDBLOCK) {
		return 0, err
	}
	pid, err := readPID(f)
	if err != nil || pid == 0 {
		return -1, nil // held, pid not written yet
	}
	return pid, nil
}

func readPID(f *os.File) (int, error) {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	return strconv.Atoi(strings.TrimSpace(string(b[:n])))
}
