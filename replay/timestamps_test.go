package replay

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

var hexCodec = Codec{
	Format: func(id ID) string { return hex.EncodeToString(id[:]) },
	Parse: func(s string) (ID, error) {
		var id ID
		b, err := hex.DecodeString(s)
		if err == nil && len(b) != len(id) {
			err = errors.New("length")
		}
		copy(id[:], b)
		return id, err
	},
}

// The store's contract: timestamps strictly increase per identity and
// lane, survive a reload, a corrupt file is refused, and a file that
// cannot be written leaves the decision in memory, reported as unsaved.
func TestTimestamps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ts")
	s, err := Load(path, hexCodec)
	if err != nil {
		t.Fatal(err)
	}
	var store Store = s
	a, b := ID{1}, ID{2}
	for _, c := range []struct {
		id   ID
		lane byte
		ts   int64
		ok   bool
	}{
		{a, LaneIPv4, 10, true}, {a, LaneIPv4, 10, false}, {a, LaneIPv4, 9, false}, {a, LaneIPv6, 5, true},
		{b, LaneIPv4, 1, true}, {a, LaneIPv4, 11, true},
	} {
		if err := store.AdvanceLane(c.id, c.lane, c.ts); (err == nil) != c.ok || err != nil && !errors.Is(err, ErrReplay) {
			t.Fatalf("%v lane %c at %d: %v", c.id[0], c.lane, c.ts, err)
		}
	}
	again, err := Load(path, hexCodec)
	if err != nil {
		t.Fatal(err)
	}
	if again.AdvanceLane(a, LaneIPv4, 11) == nil || again.AdvanceLane(b, LaneIPv4, 2) != nil {
		t.Fatal("the state did not survive a reload")
	}
	if n := again.ClampFuture(3); n != 2 {
		t.Fatalf("ClampFuture lowered %d, want 2 (a's lanes)", n)
	}
	os.WriteFile(path, []byte("not an id 12\n"), 0o600)
	if _, err := Load(path, hexCodec); err == nil {
		t.Fatal("a corrupt file was loaded")
	}
	gone := filepath.Join(dir, "no-such-dir", "ts")
	m, err := Load(gone, hexCodec)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.AdvanceLane(a, LaneAny, 1); err != nil {
		t.Fatalf("an unwritable file refused the decision: %v", err)
	}
	if n, err := m.Unsaved(); n != 1 || err == nil {
		t.Fatalf("Unsaved = %d, %v", n, err)
	}
	if m.AdvanceLane(a, LaneAny, 1) == nil {
		t.Fatal("a replay passed while the file could not be written")
	}
	os.MkdirAll(filepath.Dir(gone), 0o700)
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _ := m.Unsaved(); n != 0 {
		t.Fatalf("Unsaved after Flush = %d", n)
	}
}
