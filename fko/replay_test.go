package fko

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReplayCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "digests")
	now := time.Now()
	c, err := OpenReplayCache(path, 5*time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	d := ReplayDigest([]byte(vectorWire))
	if c.Seen(d) {
		t.Fatal("empty cache has a digest")
	}
	if err := c.Add(d, now); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// After a restart it is still there.
	c, err = OpenReplayCache(path, 5*time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Seen(d) {
		t.Fatal("digest lost across a restart")
	}
	// Bounded by count: the oldest goes.
	for i, w := range []string{"a", "b", "c"} {
		c.Add(ReplayDigest([]byte(w)), now.Add(time.Duration(i+1)*time.Second))
	}
	if c.Len() != 3 || c.Seen(d) || !c.Seen(ReplayDigest([]byte("c"))) {
		t.Fatalf("count bound: len %d", c.Len())
	}
	c.Close()
	// Bounded by age: entries older than keep are dropped on load and the
	// file is rewritten without them.
	old := fmt.Sprintf("%s %d\n", ReplayDigest([]byte("old")), now.Add(-10*time.Minute).Unix())
	fresh := fmt.Sprintf("%s %d\n", ReplayDigest([]byte("fresh")), now.Unix())
	os.WriteFile(path, []byte(old+fresh), 0o600)
	c, err = OpenReplayCache(path, 5*time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Len() != 1 || !c.Seen(ReplayDigest([]byte("fresh"))) {
		t.Fatalf("after loading one stale and one fresh entry: len %d", c.Len())
	}
	if data, _ := os.ReadFile(path); string(data) != fresh {
		t.Fatalf("file not compacted: %q", data)
	}
	os.WriteFile(path, []byte("garbage\n"), 0o600)
	if _, err := OpenReplayCache(path, time.Minute, 10); err == nil {
		t.Fatal("corrupt cache accepted")
	}
}
