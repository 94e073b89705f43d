package server

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/postern/postern/command"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/language"
	"github.com/postern/postern/replay"
	"github.com/postern/postern/spa"
)

// Files in state_dir.
const (
	ReplayFile          = language.SPAReplayFile    // postern SPA clients' last timestamps
	CovertReplayFile    = language.CovertReplayFile // covert clients' last timestamps
	FwknopReplayFile    = language.FwknopReplayFile // fwknop replay cache
	PendingCommandsFile = "pending-commands.json"   // stop commands waiting for their time
)

// state is the languages' language.State: the files in state_dir and the
// command runner, each opened once and kept across reloads (a reload
// builds new languages on the same state). Safe for concurrent use.
type state struct {
	dir string
	log *slog.Logger

	mu         sync.Mutex
	timestamps map[string]*spa.Timestamps
	caches     map[string]*fko.ReplayCache
	runner     *command.Runner
}

func newState(dir string, log *slog.Logger) *state {
	return &state{dir: dir, log: log, timestamps: map[string]*spa.Timestamps{}, caches: map[string]*fko.ReplayCache{}}
}

// check makes the directory and refuses state someone else could have
// written: the daemon runs what its state says (pending stop commands)
// with its privileges.
func (st *state) check() error {
	if err := os.MkdirAll(st.dir, 0o700); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	if err := atomicfile.CheckTrusted(st.dir, true); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	for _, name := range []string{ReplayFile, CovertReplayFile, FwknopReplayFile, PendingCommandsFile} {
		if err := atomicfile.CheckTrusted(st.path(name), false); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	return nil
}

func (st *state) path(name string) string { return filepath.Join(st.dir, name) }

func (st *state) Timestamps(name string) (replay.Store, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if t := st.timestamps[name]; t != nil {
		return t, nil
	}
	t, err := spa.LoadTimestamps(st.path(name))
	if err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	st.timestamps[name] = t
	return t, nil
}

func (st *state) ReplayCache(name string, keep time.Duration, max int) (*fko.ReplayCache, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if c := st.caches[name]; c != nil {
		return c, nil
	}
	c, err := fko.OpenReplayCache(st.path(name), keep, max)
	if err != nil {
		return nil, err
	}
	st.caches[name] = c
	return c, nil
}

func (st *state) Runner() (*command.Runner, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.runner != nil {
		return st.runner, nil
	}
	r, err := command.Open(st.path(PendingCommandsFile), st.log)
	if err != nil {
		return nil, err
	}
	st.runner = r
	return r, nil
}

// commands returns the runner, nil if no language opened it.
func (st *state) commands() *command.Runner {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.runner
}

// durable is replay state that decides from memory while its file cannot
// be written, and writes it when it can.
type durable interface {
	Unsaved() (int, error)
	Flush() error
}

// stores returns the replay stores opened, by file name.
func (st *state) stores() map[string]durable {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make(map[string]durable, len(st.timestamps)+len(st.caches))
	for n, t := range st.timestamps {
		out[n] = t
	}
	for n, c := range st.caches {
		out[n] = c
	}
	return out
}

// close stops the runner (pending stop commands stay recorded) and closes
// the fwknop replay caches.
func (st *state) close() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.runner != nil {
		st.runner.Close()
	}
	for _, c := range st.caches {
		c.Close()
	}
}
