// Package replay is the replay state the knock languages keep: for each
// identity, the timestamp of its last accepted knock, which the next must
// exceed (WireGuard's rule). Store is the interface a language holds, so
// that shared state (a server pair's) can stand in for the file;
// Timestamps is the file-backed one. It never decides what a knock may
// open: only whether it came before.
package replay

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/postern/postern/internal/atomicfile"
)

// ID names an identity in the store: a client's public key, a hash of an
// SSH identity, a hash of a covert door and client.
type ID [32]byte

// Codec writes IDs in the state file and reads them back. Files written
// before this package existed hold postern SPA client keys' text form,
// so that is what the daemon's stores use.
type Codec struct {
	Format func(ID) string
	Parse  func(string) (ID, error)
}

// Store is the replay state a language holds. AdvanceLane records ts as
// id's latest in lane, or returns ErrReplay; ClampFuture lowers stored
// values beyond limit; Unsaved and Flush concern a store that decides from
// memory while it cannot write (a full disk).
type Store interface {
	AdvanceLane(id ID, lane byte, ts int64) error
	ClampFuture(limit int64) int
	Unsaved() (int, error)
	Flush() error
}

// ErrReplay is returned by Timestamps.Advance for a timestamp that is not
// later than the last one accepted from the same client.
var ErrReplay = errors.New("timestamp not later than the last accepted one")

// Timestamps is the replay state: for each client, the timestamp of its last
// accepted knock (WireGuard's rule: a client's timestamps strictly increase),
// kept per lane. A lane is fixed by the signed knock itself — an IPv4 grant
// address, an IPv6 one, or "use the source" — so a client knocking both
// families at once (each knock granting its own address of that family,
// the two travelling separately and arriving in either order) has each
// knock judged against its own family's last one. A replay cannot change
// lanes: the address and the flag are signed.
// It guarantees that once Advance has returned nil for (client, t), no later
// Advance for that client with a timestamp ≤ t succeeds, also after a restart
// or crash: the file is replaced atomically and synced before Advance
// returns — while the disk takes writes. When it does not (full,
// read-only), Advance decides from memory, which keeps the guarantee for
// as long as the process lives, so that the owner is never locked out by
// a full disk; Unsaved says how many decisions are not on disk yet, and
// Flush writes them once the disk takes writes again. A crash before that
// forgets them (docs/PROTOCOL.md §4 says what that exposes).
// State is O(clients); no nonce cache is needed. Safe for concurrent use.
type Timestamps struct {
	path    string // empty: memory only (tests)
	codec   Codec
	mu      sync.Mutex
	last    map[laneKey]int64
	lastErr error // why the last save failed, for the log
	unsaved int   // decisions made since the last successful save
}

// Lanes of the replay state. LaneAny is the whole client: covert knocks,
// and state written before lanes existed, which bounds every lane from
// below.
const (
	LaneAny    byte = 0
	LaneIPv4   byte = '4'
	LaneIPv6   byte = '6'
	LaneSource byte = 's'
)

type laneKey struct {
	client ID
	lane   byte
}

// Err says why the last write failed (nil if none did): a refusal's
// "state error" then says ENOSPC or EROFS, not just that.
func (t *Timestamps) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastErr
}

// Load opens the replay state in path, which need not exist yet, its IDs
// written with codec. An empty path keeps state in memory only.
func Load(path string, codec Codec) (*Timestamps, error) {
	t := &Timestamps{path: path, codec: codec, last: make(map[laneKey]int64)}
	if path == "" {
		return t, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		// "KEY TIMESTAMP" (the whole client, as before lanes) or
		// "KEY TIMESTAMP LANE".
		f := strings.Fields(sc.Text())
		lane := LaneAny
		if len(f) == 3 && len(f[2]) == 1 && strings.Contains("46s", f[2]) {
			lane = f[2][0]
		}
		var c ID
		var v int64
		err := fmt.Errorf("%d fields", len(f))
		if len(f) == 2 || lane != LaneAny {
			if c, err = t.codec.Parse(f[0]); err == nil {
				v, err = strconv.ParseInt(f[1], 10, 64)
			}
		}
		if err != nil {
			// A corrupt replay file must stop the daemon: ignoring it
			// would reopen every past knock inside the freshness window.
			return nil, fmt.Errorf("%s:%d: corrupt replay state line", path, n)
		}
		t.last[laneKey{c, lane}] = v
	}
	return t, sc.Err()
}

// Advance records ts as client's latest timestamp, or returns ErrReplay.
func (t *Timestamps) Advance(client ID, ts int64) error {
	return t.AdvanceLane(client, LaneAny, ts)
}

// AdvanceLane records ts as client's latest timestamp in lane, or returns
// ErrReplay: also when it is not later than what LaneAny holds (the state
// of an older release, kept as a floor).
func (t *Timestamps) AdvanceLane(client ID, lane byte, ts int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := laneKey{client, lane}
	for _, k := range []laneKey{key, {client, LaneAny}} {
		if prev, seen := t.last[k]; seen && ts <= prev {
			return ErrReplay
		}
	}
	t.last[key] = ts
	if err := t.save(); err != nil {
		// Decide from memory: refusing every knock while the disk is full
		// would lock the owner out.
		t.lastErr = err
		t.unsaved++
		return nil
	}
	t.lastErr, t.unsaved = nil, 0
	return nil
}

// Unsaved returns how many accepted timestamps are only in memory, and why
// the last write failed.
func (t *Timestamps) Unsaved() (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unsaved, t.lastErr
}

// Flush writes the state if decisions were made while it could not be.
func (t *Timestamps) Flush() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.unsaved == 0 {
		return nil
	}
	if err := t.save(); err != nil {
		t.lastErr = err
		return err
	}
	t.lastErr, t.unsaved = nil, 0
	return nil
}

func (t *Timestamps) save() error {
	if t.path == "" {
		return nil
	}
	var b strings.Builder
	for k, ts := range t.last {
		if k.lane == LaneAny {
			fmt.Fprintf(&b, "%s %d\n", t.codec.Format(k.client), ts)
		} else {
			fmt.Fprintf(&b, "%s %d %c\n", t.codec.Format(k.client), ts, k.lane)
		}
	}
	return atomicfile.Write(t.path, []byte(b.String()), 0o600)
}

// ClampFuture lowers every stored timestamp later than limit to limit and
// returns how many it lowered. The server calls it with now + max_skew: a
// timestamp stored while this clock (and the clients') ran ahead would
// otherwise refuse every knock as a replay for as long as the error was,
// once the clocks are corrected. No knock that the window still accepts
// passes because of it: those ≤ limit are refused as before. What is given
// up is only a knock sent during the error, now in the future, that would
// become fresh again later; max_skew bounds the lock-out instead.
func (t *Timestamps) ClampFuture(limit int64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for c, ts := range t.last {
		if ts > limit {
			t.last[c] = limit
			n++
		}
	}
	return n
}
