package capture

import (
	"context"
	"errors"
	"sync"
)

// Memory is a Source fed by the test that owns it, the in-memory fake of
// capture for tests of the daemon's pipeline. Send returns only after the
// handler has taken the frame, so a test can check the outcome at once.
type Memory struct {
	in        chan memFrame
	closeOnce sync.Once
	closed    chan struct{}
}

type memFrame struct {
	f    Frame
	raw  []byte // parsed instead of f when set
	done chan struct{}
}

// NewMemory returns an empty Memory source.
func NewMemory() *Memory { return &Memory{in: make(chan memFrame), closed: make(chan struct{})} }

// ErrClosed is Send's answer once the source is closed or its Run ended.
var ErrClosed = errors.New("capture: memory source closed")

// Send hands f to the handler and waits until it returns.
func (m *Memory) Send(f Frame) error { return m.send(memFrame{f: f}) }

// SendPacket parses pkt (an IP packet) as capture does and hands the
// result, or the parse error, to the handler.
func (m *Memory) SendPacket(pkt []byte) error { return m.send(memFrame{raw: pkt}) }

func (m *Memory) send(mf memFrame) error {
	mf.done = make(chan struct{})
	select {
	case m.in <- mf:
	case <-m.closed:
		return ErrClosed
	}
	<-mf.done
	return nil
}

// Run hands sent frames to h until ctx ends or the source is closed.
func (m *Memory) Run(ctx context.Context, h Handler) error {
	defer m.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.closed:
			return nil
		case mf := <-m.in:
			if mf.raw != nil {
				var f Frame
				err := Parse(mf.raw, &f)
				h(&f, err)
			} else {
				h(&mf.f, nil)
			}
			close(mf.done)
		}
	}
}

// Close ends Run.
func (m *Memory) Close() error {
	m.closeOnce.Do(func() { close(m.closed) })
	return nil
}
