package firewall

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/port"
)

// Keeper wraps a Backend and keeps what postern installed in place:
//
//   - It remembers the rules it set up and the grants it made (a ledger of
//     address, port, end and name), so that when someone flushes the
//     ruleset, deletes the table or destroys the sets, Check re-installs the
//     rules atomically and puts back the grants that were lost, each with
//     only its remaining time. A restore never widens access: it adds back
//     nothing that was not live.
//   - What is revoked stays revoked: a grant the kernel loses while the
//     rules are intact (postern revoke, nft delete element, a flushed
//     set) was deleted on purpose and is forgotten; Prune drops the grants
//     the configuration no longer allows. Only a destroyed table or set
//     brings grants back.
//   - A re-grant extends a grant to the later of its two ends and never
//     shortens it. The kernel is the truth about what is live: the ledger
//     is only trusted to skip a grant after the kernel confirms it holds
//     the grant, so a grant removed behind postern's back is installed again.
//
// Its zero value is not usable; use NewKeeper. Safe for concurrent use.
type Keeper struct {
	b   Backend
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	rules    Rules
	set      bool // Setup has run: Check has something to keep
	ledger   map[Grant]entry
	restores int

	audits    int  // Checks that found the rules intact
	urgent    bool // the next Check compares the ledger with the kernel
	forgotten int  // grants found deleted behind the daemon's back
	consumed  int  // one-shot grants a connection used
	idleEnded int  // idle grants that ended idle
	renewed   int  // grants a knock found live and extended
	// used counts the connections a counted grant let in since it was
	// made (conntrack tracks them): a restore gives back only the rest.
	// Nil: none is counted as used.
	used func(g Grant, since time.Time) int

	lastIntact time.Time // when the rules were last known whole
	sweep      Sweeper
}

type entry struct {
	since, until time.Time
	name         string
	connections  int // a counted grant's, as granted
}

// NewKeeper wraps b; log receives restores (nil: discarded).
func NewKeeper(b Backend, log *slog.Logger) *Keeper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Keeper{b: b, log: log, now: time.Now, ledger: map[Grant]entry{}}
}

// Backend returns the wrapped backend.
func (k *Keeper) Backend() Backend { return k.b }

// Setup installs r and learns the grants the kernel already holds (from
// an earlier run), so they too are restored if lost.
func (k *Keeper) Setup(r Rules) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.b.Setup(r); err != nil {
		return err
	}
	k.rules, k.set = r, true
	k.lastIntact = k.now()
	live, err := k.b.List()
	if err != nil {
		return err
	}
	now := k.now()
	for _, g := range live {
		if e, ok := k.ledger[keyOf(g)]; !ok || e.until.Before(now.Add(g.Timeout)) {
			k.ledger[keyOf(g)] = entry{since: now, until: now.Add(g.Timeout), name: g.Name}
		}
	}
	return nil
}

// SetUsed gives the Keeper a way to count the connections a counted grant
// let in (conntrack holds them), so that a restore after a flush gives
// back only the connections left, and never a grant used up.
func (k *Keeper) SetUsed(used func(g Grant, since time.Time) int) {
	k.mu.Lock()
	k.used = used
	k.mu.Unlock()
}

// Lifecycle counts: one-shot grants used, idle grants ended idle, grants
// renewed by a knock that found them live.
func (k *Keeper) Lifecycle() (consumed, idleEnded, renewed int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.consumed, k.idleEnded, k.renewed
}

// Grant opens ports; a grant already live for longer is left as it is, if
// the kernel still holds it.
func (k *Keeper) Grant(gs []Grant) error {
	_, err := k.GrantRenew(gs)
	return err
}

// GrantRenew is Grant, saying how many of gs were live already: renewed,
// extended to the later end (never shortened, never doubled).
func (k *Keeper) GrantRenew(gs []Grant) (renewed int, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	todo := make([]Grant, 0, len(gs))
	var longer []Grant
	for _, g := range gs {
		e, ok := k.ledger[keyOf(g)]
		if ok && e.until.After(now) {
			renewed++
		}
		if ok && e.until.After(now.Add(g.Timeout)) {
			longer = append(longer, g)
			continue
		}
		todo = append(todo, g)
	}
	if len(longer) > 0 {
		live, err := k.liveKeys()
		if err != nil {
			return 0, err
		}
		for _, g := range longer {
			if !live[keyOf(g)] {
				delete(k.ledger, keyOf(g)) // removed behind our back
				todo = append(todo, g)
			}
		}
	}
	k.renewed += renewed
	if len(todo) == 0 {
		return renewed, nil
	}
	if err := k.b.Grant(todo); err != nil {
		return 0, err
	}
	for _, g := range todo {
		since := now
		if e, ok := k.ledger[keyOf(g)]; ok && e.until.After(now) {
			since = e.since
		}
		k.ledger[keyOf(g)] = entry{since: since, until: now.Add(g.Timeout), name: g.Name, connections: g.Connections}
	}
	return renewed, nil
}

func (k *Keeper) liveKeys() (map[Grant]bool, error) {
	live, err := k.b.List()
	if err != nil {
		return nil, err
	}
	m := make(map[Grant]bool, len(live))
	for _, g := range live {
		m[keyOf(g)] = true
	}
	return m, nil
}

// Revoke closes ports now.
func (k *Keeper) Revoke(gs []Grant) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.b.Revoke(gs); err != nil {
		return err
	}
	for _, g := range gs {
		delete(k.ledger, keyOf(g))
	}
	return nil
}

// List returns what the kernel holds.
func (k *Keeper) List() ([]Grant, error) { return k.b.List() }

// Installed is the backend's.
func (k *Keeper) Installed() ([]port.Spec, bool, error) { return k.b.Installed() }

// Cleanup removes everything and forgets the ledger: nothing is restored.
func (k *Keeper) Cleanup() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.set = false
	clear(k.ledger)
	return k.b.Cleanup()
}

// Close closes the backend.
func (k *Keeper) Close() error { return k.b.Close() }

// Restores returns how many times Check has restored the rules.
func (k *Keeper) Restores() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.restores
}

// Check audits the installed rules and restores them if anything is
// missing or altered. It returns what was restored (nil if intact).
func (k *Keeper) Check() (Damage, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	for key, e := range k.ledger {
		if !e.until.After(now) {
			delete(k.ledger, key)
		}
	}
	if !k.set {
		return Damage{}, nil
	}
	d, err := k.b.Audit(k.rules)
	if err != nil {
		return Damage{}, err
	}
	if d.Intact() {
		k.lastIntact = now
		// The rules are whole, so a grant the kernel no longer holds
		// before its time was deleted on purpose (postern revoke in
		// another process, nft delete element, a flushed set): it is
		// forgotten, and a later restore never brings it back.
		return Damage{}, k.forgetDeleted(now)
	}
	if err := k.b.Setup(k.rules); err != nil {
		return d, fmt.Errorf("restoring %s: %w", strings.Join(d.What, ", "), err)
	}
	k.restores++
	if d.GrantsLost {
		if err := k.restoreGrants(now); err != nil {
			return d, err
		}
	}
	if k.sweep != nil {
		// Connections made while the rules were gone slipped past them:
		// those to protected ports that no live grant covers are cut.
		live, err := k.b.List()
		if err != nil {
			return d, err
		}
		n, err := k.sweep(k.rules.Protected, live, k.lastIntact.Add(-100*time.Millisecond))
		if err != nil {
			return d, fmt.Errorf("cutting connections made while the rules were gone: %w", err)
		}
		d.Cut = n
	}
	return d, nil
}

// restoreGrants puts back the ledger's grants the kernel lost, each with
// its remaining time.
func (k *Keeper) restoreGrants(now time.Time) error {
	live, err := k.liveKeys()
	if err != nil {
		return err
	}
	var back []Grant
	for key, e := range k.ledger {
		if left := e.until.Sub(now); !live[key] && left >= time.Second {
			g := key
			g.Timeout, g.Name = left, e.name
			if key.Connections > 0 {
				// Connections it let in before the flush (the audit may
				// not have seen them yet) are used, not lost.
				g.Connections = max(e.connections, 1)
				if k.used != nil {
					g.Connections -= k.used(key, e.since)
				}
				if g.Connections <= 0 {
					delete(k.ledger, key)
					k.consumed++
					continue
				}
			}
			back = append(back, g)
		}
	}
	slices.SortFunc(back, func(a, b Grant) int { return a.Addr.Compare(b.Addr) })
	if len(back) > 0 {
		if err := k.b.Grant(back); err != nil {
			return fmt.Errorf("restoring %d grants: %w", len(back), err)
		}
	}
	return nil
}

// Sweeper cuts the tracked connections to protected ports that began at
// or after since and that no live grant covers, and says how many.
type Sweeper func(protected []port.Spec, live []Grant, since time.Time) (int, error)

// SetSweeper makes every restore end with sweep.
func (k *Keeper) SetSweeper(sweep Sweeper) {
	k.mu.Lock()
	k.sweep = sweep
	k.mu.Unlock()
}

// forgetDeleted drops from the ledger the grants the kernel no longer
// holds. A large ledger is compared on every eighth audit only (listing
// 100 000 elements costs tens of milliseconds); nftables events call for
// the comparison at once where they are watched.
func (k *Keeper) forgetDeleted(now time.Time) error {
	k.audits++
	if len(k.ledger) == 0 || len(k.ledger) > 4096 && k.audits%8 != 0 && !k.urgent {
		return nil
	}
	k.urgent = false
	live, err := k.liveKeys()
	if err != nil {
		return err
	}
	for key, e := range k.ledger {
		// A grant made in this very instant may not be listed yet only
		// if the kernel reorders; Grant holds the lock, so none is.
		if !live[key] && e.until.After(now) {
			delete(k.ledger, key)
			switch {
			case key.Connections > 0:
				k.consumed++
				k.log.Info("grant used: its connections are in", "allow", key.Addr, "port", key.Port, "client", e.name,
					"connections", max(e.connections, 1))
			case key.Idle > 0:
				k.idleEnded++
				k.log.Info("grant ended idle", "allow", key.Addr, "port", key.Port, "client", e.name, "idle", key.Idle)
			default:
				k.forgotten++
				k.log.Info("grant deleted outside the daemon; it stays deleted", "allow", key.Addr, "port", key.Port,
					"client", e.name)
			}
		}
	}
	return nil
}

// Forgotten returns how many grants the audits found deleted behind the
// daemon's back and forgot.
func (k *Keeper) Forgotten() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.forgotten
}

// Prune revokes every live grant, in the kernel and in the ledger, that
// keep refuses, and returns them. The daemon calls it at start-up and
// after each reload with its policy, so a client removed from the
// configuration, or no longer allowed a port, has no access left.
func (k *Keeper) Prune(keep func(Grant) bool) ([]Grant, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	live, err := k.b.List()
	if err != nil {
		return nil, err
	}
	var gone []Grant
	seen := map[Grant]bool{}
	for _, g := range live {
		seen[keyOf(g)] = true
		if !keep(g) {
			gone = append(gone, g)
		}
	}
	now := k.now()
	for key, e := range k.ledger {
		if g := key; !seen[key] {
			g.Name, g.Timeout = e.name, e.until.Sub(now)
			if !keep(g) {
				delete(k.ledger, key) // not live, and never to be restored
			}
		}
	}
	if len(gone) == 0 {
		return nil, nil
	}
	if err := k.b.Revoke(gone); err != nil {
		return nil, err
	}
	for _, g := range gone {
		delete(k.ledger, keyOf(g))
	}
	return gone, nil
}

// RevokeOwned closes those of gs that owner holds (by the ledger's name,
// else the kernel's) and returns them: a client's "close" request closes
// its own grants, never another client's for the same address.
func (k *Keeper) RevokeOwned(gs []Grant, owner string) ([]Grant, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	live, err := k.b.List()
	if err != nil {
		return nil, err
	}
	names := make(map[Grant]string, len(live))
	for _, g := range live {
		names[keyOf(g)] = g.Name
	}
	var mine []Grant
	for _, g := range gs {
		name, ok := names[keyOf(g)]
		if e, inLedger := k.ledger[keyOf(g)]; inLedger {
			name = e.name
		}
		if ok && name == owner {
			mine = append(mine, g)
		}
	}
	if len(mine) == 0 {
		return nil, nil
	}
	if err := k.b.Revoke(mine); err != nil {
		return nil, err
	}
	for _, g := range mine {
		delete(k.ledger, keyOf(g))
	}
	return mine, nil
}

// Urge makes the next Check compare the ledger with the kernel whatever
// its size: an event said something of postern's changed.
func (k *Keeper) Urge() {
	k.mu.Lock()
	k.urgent = true
	k.mu.Unlock()
}

// Watch runs Check every interval, and at once on each kick (an event
// said something of postern's changed), until ctx ends, logging each
// restore at warning level and calling restored (a metric) with what was
// missing.
func (k *Keeper) Watch(ctx context.Context, every time.Duration, kick <-chan struct{}, restored func(Damage)) {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
			k.Urge()
		}
		d, err := k.Check()
		switch {
		case err != nil && !failing:
			k.log.Error("firewall audit", "err", err)
			failing = true
		case err == nil && failing:
			k.log.Info("firewall audit works again")
			failing = false
		}
		if !d.Intact() && err == nil {
			k.log.Warn("firewall restored", "missing", strings.Join(d.What, ", "), "grants_restored", d.GrantsLost,
				"connections_cut", d.Cut)
			if restored != nil {
				restored(d)
			}
		}
	}
}
