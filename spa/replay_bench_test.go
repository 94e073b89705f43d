package spa

import (
	"path/filepath"
	"testing"

	"github.com/postern/postern/replay"
)

// BenchmarkAdvancePersistent is the durable part of accepting a knock: the
// replay file rewritten and synced (file and directory).
func BenchmarkAdvancePersistent(b *testing.B) {
	ts, err := LoadTimestamps(filepath.Join(b.TempDir(), "timestamps"))
	if err != nil {
		b.Fatal(err)
	}
	c, _ := GenerateClientKey()
	pub := replay.ID(c.Public())
	var i int64
	for b.Loop() {
		i++
		if err := ts.Advance(pub, i); err != nil {
			b.Fatal(err)
		}
	}
}
