package knock

import (
	"fmt"
	"time"
)

// FieldError is a problem with one setting of a door. Key is the
// postern.toml name of the setting; readers translate it and add the line.
type FieldError struct {
	Key, Msg string
}

func (e FieldError) Error() string { return e.Key + ": " + e.Msg }

// Validate checks what a door's readers cannot check field by field.
func (d *Door) Validate() []FieldError {
	var errs []FieldError
	fail := func(key, format string, args ...any) {
		errs = append(errs, FieldError{key, fmt.Sprintf(format, args...)})
	}
	sources := 0
	for _, set := range []bool{len(d.Sequence) > 0, d.OneTime != nil, d.Rotating != nil} {
		if set {
			sources++
		}
	}
	switch {
	case sources == 0:
		fail("sequence", "missing: give sequence, one_time_sequences or secret_file")
	case sources > 1:
		fail("sequence", "give only one of sequence, one_time_sequences and secret_file")
	}
	if len(d.Sequence) > MaxSequence {
		fail("sequence", "at most %d hits", MaxSequence)
	}
	if d.SeqTimeout < time.Second {
		fail("seq_timeout", "must be at least 1 second")
	}
	start6 := d.StartCommand6 != nil && *d.StartCommand6 != ""
	if len(d.Open) == 0 && d.StartCommand == "" && !start6 {
		fail("open", "the door does nothing: give open or start_command")
	}
	if len(d.Open) > 0 && d.Duration < time.Second {
		fail("duration", "must be at least 1 second")
	}
	if (d.StopCommand != "" || (d.StopCommand6 != nil && *d.StopCommand6 != "")) && d.CmdTimeout < time.Second {
		fail("cmd_timeout", "must be at least 1 second")
	}
	if r := d.Rotating; r != nil {
		switch {
		case len(r.Secret) < 16:
			fail("secret_file", "the secret must be at least 16 bytes")
		case r.Period < time.Second || r.Period%time.Second != 0:
			fail("period", "must be whole seconds, at least 1")
		case r.Length < 2 || r.Length > MaxSequence:
			fail("length", "must be 2 to %d", MaxSequence)
		case r.Lo == 0 || r.Hi < r.Lo || int(r.Hi-r.Lo) < 16:
			fail("port_range", "want LOW-HIGH with at least 16 ports, such as \"20000-29999\"")
		}
	}
	return errs
}
