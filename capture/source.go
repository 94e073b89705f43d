package capture

import "context"

// Handler receives every packet a Source reads. err is nil for a parsed
// Frame; otherwise it says why the packet was malformed and f holds what
// could be read (often the source address). f and its Payload are valid only
// until Handler returns. A Source never calls its Handler concurrently.
type Handler func(f *Frame, err error)

// Source delivers packets until its context ends or it fails.
type Source interface {
	Run(ctx context.Context, h Handler) error
	Close() error
}
