package firewall

import (
	"sync"
	"time"
)

// Memory is a backend that enforces nothing and remembers grants in memory.
// It is the "none" backend (dry runs: the log shows every decision) and the
// fake that unit tests use in place of a kernel.
type Memory struct {
	mu     sync.Mutex
	rules  Rules
	grants map[Grant]time.Time
	now    func() time.Time
}

// NewMemory returns an empty Memory backend.
func NewMemory() *Memory { return &Memory{grants: make(map[Grant]time.Time), now: time.Now} }

// Setup implements Backend.
func (m *Memory) Setup(r Rules) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rules = r
	return nil
}

// Grant implements Backend.
func (m *Memory) Grant(gs []Grant) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, g := range gs {
		k := Grant{Addr: g.Addr.Unmap(), Port: g.Port}
		if until := now.Add(g.Timeout); until.After(m.grants[k]) {
			m.grants[k] = until
		}
	}
	return nil
}

// Revoke implements Backend.
func (m *Memory) Revoke(gs []Grant) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, g := range gs {
		delete(m.grants, Grant{Addr: g.Addr.Unmap(), Port: g.Port})
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
			k.Timeout = left
			out = append(out, k)
		}
	}
	return out, nil
}

// Cleanup implements Backend.
func (m *Memory) Cleanup() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rules = Rules{}
	clear(m.grants)
	return nil
}

// Close implements Backend.
func (m *Memory) Close() error { return nil }
