package server

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/postern/postern/config"
	"github.com/postern/postern/firewall"
	"github.com/postern/postern/firewall/mode"
	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/port"
)

// SnapshotFile, in state_dir, holds the closed state of the last good
// start or reload: what postern installs when its configuration cannot
// be read, so that a typo never leaves the host more open than it was
// the last time postern ran.
const SnapshotFile = "closed-state.json"

// Snapshot is the closed state: the rules (no grants) and the backend
// that held them.
type Snapshot struct {
	Backend mode.Mode      `json:"backend"`
	Rules   firewall.Rules `json:"rules"`
	// Protected is Rules.Protected as text, for a person reading the file.
	Protected string    `json:"protected"`
	Config    string    `json:"config"`
	Written   time.Time `json:"written"`
}

// WriteSnapshot records rules as cfg's closed state.
func WriteSnapshot(cfg *config.Config, rules firewall.Rules) error {
	snap := Snapshot{Backend: cfg.Firewall.Backend, Rules: rules, Protected: port.Join(rules.Protected),
		Config: cfg.Path, Written: time.Now().UTC().Truncate(time.Second)}
	data, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(cfg.StateDir, SnapshotFile), append(data, '\n'), 0o600)
}

// ReadSnapshot reads the closed state kept in dir.
func ReadSnapshot(dir string) (*Snapshot, string, error) {
	path := filepath.Join(dir, SnapshotFile)
	if err := atomicfile.CheckTrusted(path, false); err != nil {
		return nil, path, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, path, err
	}
	var snap Snapshot
	if err := json.Unmarshal(data, &snap); err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	if _, ok := mode.Parse(string(snap.Backend)); !ok {
		return nil, path, fmt.Errorf("%s: unknown backend %q", path, snap.Backend)
	}
	return &snap, path, nil
}

// topStateDir finds a top-level state_dir = "…" line in a file that does
// not parse as TOML at all.
var topStateDir = regexp.MustCompile(`(?m)^\s*state_dir\s*=\s*["']([^"'\n]+)["']`)

// StateDirOf says where the configuration at path keeps its state, even
// when the file is broken: from the file if its state_dir can still be
// read (a wrong value elsewhere, an unknown key, a syntax error after
// it), else fallback (the default if empty). Only the closed-state
// snapshot is read from it.
func StateDirOf(path, fallback string) string {
	if fallback == "" {
		fallback = config.DefaultStateDir
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fallback
	}
	var loose struct {
		StateDir string `toml:"state_dir"`
	}
	if toml.Unmarshal(data, &loose) == nil {
		if loose.StateDir != "" {
			return loose.StateDir
		}
		return fallback
	}
	head := data
	if i := regexp.MustCompile(`(?m)^\s*\[`).FindIndex(data); i != nil {
		head = data[:i[0]] // top-level keys come before the first table
	}
	if m := topStateDir.FindSubmatch(head); m != nil {
		return string(m[1])
	}
	return fallback
}
