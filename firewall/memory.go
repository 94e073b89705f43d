package firewall

import (
	"sync"
	"time"

	"github.com/postern/postern/port"
)

// Memory is a backend that enforces nothing and remembers grants in memory.
// It is the "none" backend (dry runs: the log shows every decision) and the
// fake that unit tests use in place of a kernel.
type Memory struct {
	mu        sync.Mutex
	rules     Rules
	installed bool
	grants    map[Grant]time.Time
	names     map[Grant]string
	now       func() time.Time
}

// NewMemory returns an empty Memory backend.
func NewMemory() *Memory {
	return &Memory{grants: make(map[Grant]time.Time), names: make(map[Grant]string), now: time.Now}
}

// Setup implements Backend.
func (m *Memory) Setup(r Rules) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rules, m.installed = r, true
	return nil
}

// Flush forgets everything, as `nft flush ruleset` does to a kernel
// backend: for tests of what notices and restores it.
func (m *Memory) Flush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rules, m.installed = Rules{}, false
	clear(m.grants)
}

// Rules returns what is installed.
func (m *Memory) Rules() Rules {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rules
}

// Audit implements Backend: after Flush, everything is missing.
func (m *Memory) Audit(Rules) (Damage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var d Damage
	if !m.installed {
		d.add("rules", true)
	}
	return d, nil
}

// Installed implements Backend.
func (m *Memory) Installed() ([]port.Spec, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rules.Protected, m.installed, nil
}

// Grant implements Backend.
func (m *Memory) Grant(gs []Grant) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, g := range gs {
		m.grants[keyOf(g)] = now.Add(g.Timeout)
		m.names[keyOf(g)] = g.Name
	}
	return nil
}

// Revoke implements Backend.
func (m *Memory) Revoke(gs []Grant) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, g := range gs {
		delete(m.grants, keyOf(g))
	}
	return nil
}

// List implements Backend.
func (m *Memory) List() ([]Grant, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var out []Grant
	for k, until := range m.grants {
		if left := until.Sub(now); left > 0 {
			k.Timeout, k.Name = left, m.names[k]
			out = append(out, k)
		}
	}
	return out, nil
}

// Cleanup implements Backend.
func (m *Memory) Cleanup() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rules, m.installed = Rules{}, false
	clear(m.grants)
	return nil
}

// Close implements Backend.
func (m *Memory) Close() error { return nil }
