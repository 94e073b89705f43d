package fko

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/atomicfile"
)

// ReplayDigest is fwknopd's replay key: unpadded base64 of SHA-256 over the
// packet as received.
func ReplayDigest(wire []byte) string {
	s := sha256.Sum256(wire)
	return b64.EncodeToString(s[:])
}

// ContentDigest is the replay key of an authenticated message: a hash of
// its decoded content (random value, fields, inner digest), so that a
// packet re-encoded on the way (other base64 for the same ciphertext, a
// re-padded GnuPG message) is still the same knock.
func ContentDigest(m *Message) string {
	pt, err := m.Encode()
	if err != nil {
		pt = fmt.Sprintf("%+v", *m)
	}
	s := sha256.Sum256([]byte("fwknop content\x00" + pt))
	return b64.EncodeToString(s[:])
}

// ReplayCache remembers the digests of accepted fwknop packets. Its
// contract, fixing what fwknopd gets wrong:
//   - only authenticated packets are added (the caller adds after the HMAC
//     and decryption succeeded), so junk cannot fill it;
//   - it survives restarts and reboots: it lives in the state directory,
//     not on tmpfs, and every Add is on disk (appended and synced) before
//     it returns — while the disk takes writes; when it does not, Add
//     decides from memory and Flush writes the file once it can;
//   - it is bounded by age: entries older than Keep are dropped (a packet
//     that old fails the timestamp check anyway), and by count: beyond Max
//     the oldest go first.
//
// Safe for concurrent use.
type ReplayCache struct {
	path string
	keep time.Duration
	max  int

	mu      sync.Mutex
	seen    map[string]int64 // digest → unix seconds added
	f       *os.File
	written int   // lines in the file, for compaction
	unsaved int   // digests added while the file could not be written
	lastErr error // why
}

// OpenReplayCache loads path (which need not exist), drops stale entries
// and rewrites the file compactly.
func OpenReplayCache(path string, keep time.Duration, max int) (*ReplayCache, error) {
	c := &ReplayCache{path: path, keep: keep, max: max, seen: map[string]int64{}}
	f, err := os.Open(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			d, ts, ok := strings.Cut(sc.Text(), " ")
			t, err := strconv.ParseInt(ts, 10, 64)
			if !ok || err != nil || len(d) != 43 {
				f.Close()
				return nil, fmt.Errorf("%s:%d: corrupt replay cache line", path, n)
			}
			c.seen[d] = t
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.compact(time.Now()); err != nil {
		return nil, err
	}
	return c, nil
}

// Seen reports whether digest was accepted before.
func (c *ReplayCache) Seen(digest string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.seen[digest]
	return ok
}

// Len returns the number of digests held.
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// ErrReplayed is Add's answer for a digest already recorded.
var ErrReplayed = errors.New("fwknop packet seen before")

// Add records digest durably, or returns ErrReplayed if it is there: the
// check and the record are one step, for decoders running concurrently.
func (c *ReplayCache) Add(digest string, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[digest]; ok {
		return ErrReplayed
	}
	c.seen[digest] = now.Unix()
	if c.unsaved > 0 {
		c.unsaved++ // the file is behind: Flush rewrites it whole
		return nil
	}
	_, err := fmt.Fprintf(c.f, "%s %d\n", digest, now.Unix())
	if err == nil {
		err = c.f.Sync()
	}
	if err != nil {
		// Decide from memory (a full disk must not lock anyone out);
		// Flush rewrites the file once it can. A line half written is
		// replaced then.
		c.unsaved, c.lastErr = 1, err
		return nil
	}
	c.written++
	if len(c.seen) > c.max || c.written > 2*len(c.seen)+1024 {
		if err := c.compact(now); err != nil {
			c.unsaved, c.lastErr = 1, err
		}
	}
	return nil
}

// Unsaved returns how many digests are only in memory, and why the last
// write failed.
func (c *ReplayCache) Unsaved() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unsaved, c.lastErr
}

// Flush rewrites the file if digests were added while it could not be
// written.
func (c *ReplayCache) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unsaved == 0 {
		return nil
	}
	if err := c.compact(time.Now()); err != nil {
		c.lastErr = err
		return err
	}
	c.unsaved, c.lastErr = 0, nil
	return nil
}

// compact drops stale entries (and the oldest beyond max) and rewrites the
// file atomically.
func (c *ReplayCache) compact(now time.Time) error {
	cutoff := now.Add(-c.keep).Unix()
	type entry struct {
		d string
		t int64
	}
	var es []entry
	for d, t := range c.seen {
		if t < cutoff {
			delete(c.seen, d)
			continue
		}
		es = append(es, entry{d, t})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].t < es[j].t })
	for len(es) > c.max {
		delete(c.seen, es[0].d)
		es = es[1:]
	}
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "%s %d\n", e.d, e.t)
	}
	if err := atomicfile.Write(c.path, []byte(b.String()), 0o600); err != nil {
		return err
	}
	if c.f != nil {
		c.f.Close()
	}
	f, err := os.OpenFile(c.path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	c.f, c.written = f, len(es)
	return nil
}

// Close closes the file.
func (c *ReplayCache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.f.Close()
}
