package capture

import (
	"context"
	"sync"
)

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

// Multi runs several sources as one: their packets reach the handler one
// at a time, as from any Source.
func Multi(srcs ...Source) Source {
	if len(srcs) == 1 {
		return srcs[0]
	}
	return multi(srcs)
}

type multi []Source

func (m multi) Run(ctx context.Context, h Handler) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	errs := make(chan error, len(m))
	for _, s := range m {
		go func() {
			errs <- s.Run(ctx, func(f *Frame, err error) {
				mu.Lock()
				defer mu.Unlock()
				h(f, err)
			})
		}()
	}
	var first error
	for range m {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

func (m multi) Close() error {
	for _, s := range m {
		s.Close()
	}
	return nil
}
