package knock

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
)

// Door is one knock sequence and what it opens. The engine uses the
// sequence fields; the server uses the action fields.
type Door struct {
	Name       string
	SeqTimeout time.Duration
	Flags      Flags      // TCP hits only
	Target     netip.Addr // if valid, only hits addressed to it count
	// Knockd applies knockd's rules (doors read from a knockd.conf): any
	// hit knockd would capture that is not the next one discards the
	// attempt, a repeat included, and a knocker with an attempt in
	// progress starts no new one.
	Knockd bool

	// Exactly one source of sequences.
	Sequence []Hit
	OneTime  *OneTime
	Rotating *Rotating

	// Action: grants through the firewall backend…
	Open     []port.Spec
	Duration time.Duration
	Lifetime policy.Lifetime // how they end (grant = "once", idle)
	// …and/or knockd-style commands. A nil *6 command falls back to the
	// IPv4 one; an empty one disables the command for IPv6 (knockd).
	StartCommand, StopCommand   string
	StartCommand6, StopCommand6 *string
	CmdTimeout                  time.Duration
}

// Commands returns the start and stop command for a knocker at src.
func (d *Door) Commands(src netip.Addr) (start, stop string) {
	start, stop = d.StartCommand, d.StopCommand
	if src.Is6() && !src.Is4In6() {
		if d.StartCommand6 != nil {
			start = *d.StartCommand6
		}
		if d.StopCommand6 != nil {
			stop = *d.StopCommand6
		}
	}
	return start, stop
}

// Variant is one sequence a door accepts at a moment. ID tells variants of
// a door apart: the window of a rotating door, the line of a one-time file.
type Variant struct {
	ID  int64
	Seq []Hit
}

// variants appends the sequences d accepts at now: the static sequence, the
// current one-time line, or the current and previous rotating windows.
func (d *Door) variants(now time.Time, buf []Variant) []Variant {
	switch {
	case d.Rotating != nil:
		w := d.Rotating.Window(now)
		return append(buf, d.Rotating.variant(d.Name, w), d.Rotating.variant(d.Name, w-1))
	case d.OneTime != nil:
		if id, seq, ok := d.OneTime.Current(); ok {
			return append(buf, Variant{ID: id, Seq: seq})
		}
		return buf
	}
	return append(buf, Variant{Seq: d.Sequence})
}

// Hits lists every hit a static or one-time door can use now, for building
// capture filters. Rotating doors use Rotating.Lo..Hi instead.
func (d *Door) Hits() []Hit {
	var out []Hit
	for _, v := range d.variants(time.Now(), nil) {
		out = append(out, v.Seq...)
	}
	return out
}

// OneTime is a knockd one_time_sequences file: the door's sequence is the
// first line that does not start with '#'; when it has been used, its first
// byte is overwritten with '#' (so the file itself records what was used,
// across restarts) and the next line takes over. When the file runs out the
// door opens no more. Safe for concurrent use.
type OneTime struct {
	path string
	mu   sync.Mutex
	line int   // 1-based line of the current sequence; 0 when exhausted
	off  int64 // byte offset of that line
	seq  []Hit
}

// LoadOneTime reads path. Every line that is not used up must be a valid
// sequence: a typo is found at start-up, not when its turn comes.
func LoadOneTime(path string) (*OneTime, error) {
	o := &OneTime{path: path}
	return o, o.load()
}

func (o *OneTime) load() error {
	data, err := os.ReadFile(o.path)
	if err != nil {
		return err
	}
	o.line, o.seq = 0, nil
	var off int64
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		lineOff := off
		off += int64(len(text)) + 1
		if strings.HasPrefix(text, "#") || strings.TrimSpace(text) == "" {
			continue
		}
		seq, err := ParseKnockdSequence(text)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", o.path, n, err)
		}
		if o.line == 0 {
			o.line, o.off, o.seq = n, lineOff, seq
		}
	}
	return sc.Err()
}

// Current returns the sequence in use and its line number.
func (o *OneTime) Current() (line int64, seq []Hit, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return int64(o.line), o.seq, o.line != 0
}

// Consume marks line as used and moves to the next sequence. Consuming a
// line that is no longer current is an error: each sequence opens once.
func (o *OneTime) Consume(line int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.line == 0 || int64(o.line) != line {
		return errors.New("one-time sequence already used")
	}
	f, err := os.OpenFile(o.path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt([]byte{'#'}, o.off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return o.load()
}

// Rotating derives a door's sequence from a shared secret and the time
// window, so a sniffed sequence is useless once its window has passed. The
// server accepts the current and the previous window.
type Rotating struct {
	Secret []byte
	Period time.Duration
	Length int
	Proto  port.Protocol // TCP or UDP
	Lo, Hi uint16        // ports are drawn from Lo..Hi

	mu    sync.Mutex
	cache [2]Variant // the last windows derived, so a hit costs no HMAC
}

// Window returns the window number of t.
func (r *Rotating) Window(t time.Time) int64 { return t.Unix() / int64(r.Period/time.Second) }

// Sequence derives the sequence of window w for the named door: HMAC-SHA256
// keyed by the secret over a label, the door name and the window, read as
// 16-bit numbers mapped onto Lo..Hi. No hit repeats the one before it, so a
// retransmitted hit can never count twice.
func (r *Rotating) Sequence(door string, w int64) []Hit {
	span := uint32(r.Hi-r.Lo) + 1
	seq := make([]Hit, 0, r.Length)
	var block [sha256.Size]byte
	for counter := uint32(0); len(seq) < r.Length; counter++ {
		m := hmac.New(sha256.New, r.Secret)
		m.Write([]byte("postern rotating sequence v1\x00"))
		m.Write([]byte(door))
		var tail [13]byte
		binary.BigEndian.PutUint64(tail[1:], uint64(w))
		binary.BigEndian.PutUint32(tail[9:], counter)
		m.Write(tail[:])
		m.Sum(block[:0])
		for i := 0; i+2 <= len(block) && len(seq) < r.Length; i += 2 {
			// Modulo bias over a span of ≤ 65536 from 16 bits is at
			// most a factor of two for a few ports: irrelevant for
			// guessing a sequence of several hits.
			h := Hit{Proto: r.Proto, Num: r.Lo + uint16(uint32(binary.BigEndian.Uint16(block[i:]))%span)}
			if len(seq) > 0 && seq[len(seq)-1] == h {
				continue
			}
			seq = append(seq, h)
		}
	}
	return seq
}

// variant returns window w's sequence, from the cache when it can. A
// Rotating belongs to one door, so the door name need not be in the key.
func (r *Rotating) variant(door string, w int64) Variant {
	r.mu.Lock()
	defer r.mu.Unlock()
	slot := &r.cache[w&1]
	if slot.ID != w || slot.Seq == nil {
		*slot = Variant{ID: w, Seq: r.Sequence(door, w)}
	}
	return *slot
}
