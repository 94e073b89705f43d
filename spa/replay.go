package spa

import "github.com/postern/postern/replay"

// ErrReplay is the replay store's answer for a timestamp that is not
// later than the last one accepted from the same client.
var ErrReplay = replay.ErrReplay

// Timestamps is the file-backed replay store.
type Timestamps = replay.Timestamps

// ReplayCodec writes replay IDs as postern SPA client public keys' text,
// the form every replay state file has always had.
var ReplayCodec = replay.Codec{
	Format: func(id replay.ID) string { return ClientPublicKey(id).String() },
	Parse: func(s string) (replay.ID, error) {
		k, err := ParseClientPublicKey(s)
		return replay.ID(k), err
	},
}

// LoadTimestamps opens the replay state in path (which need not exist;
// empty: memory only) with ReplayCodec.
func LoadTimestamps(path string) (*Timestamps, error) { return replay.Load(path, ReplayCodec) }
