package knock

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/internal/conferr"
)

// KnockdConf is a knockd.conf, read as knockd 0.8 reads it.
type KnockdConf struct {
	Path      string
	UseSyslog bool
	LogFile   string
	PidFile   string
	Interface string // empty when the file does not say (knockd's default is eth0)
	Doors     []*Door
}

// knockd's defaults (src/knockd.c SEQ_TIMEOUT, CMD_TIMEOUT).
const (
	KnockdSeqTimeout = 25 * time.Second
	KnockdCmdTimeout = 10 * time.Second
)

// ReadKnockdConf reads a knockd.conf file.
func ReadKnockdConf(path string) (*KnockdConf, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseKnockdConf(path, data)
}

// knockd directive names (upper-cased, as knockd compares them) and the
// postern.toml name a FieldError uses for each.
var knockdKeys = map[string]string{
	"SEQUENCE": "sequence", "ONE_TIME_SEQUENCES": "one_time_sequences",
	"SEQ_TIMEOUT": "seq_timeout", "TIMEOUT": "seq_timeout", "TCPFLAGS": "tcp_flags",
	"START_COMMAND": "start_command", "COMMAND": "start_command",
	"START_COMMAND_6": "start_command_6", "COMMAND_6": "start_command_6",
	"STOP_COMMAND": "stop_command", "STOP_COMMAND_6": "stop_command_6",
	"CMD_TIMEOUT": "cmd_timeout", "TARGET": "target",
}

// ParseKnockdConf reads data, which came from path. Directive names are
// case-insensitive; [options] holds the global directives and every other
// [section] is a door. Unlike knockd, a directive it does not know is an
// error naming the line, never silently skipped.
//
// Long on purpose: knockd.conf's grammar, option by option, in one place.
func ParseKnockdConf(path string, data []byte) (*KnockdConf, error) {
	c := &KnockdConf{Path: path}
	var errs conferr.Errors
	fail := func(line int, key, format string, args ...any) {
		errs = append(errs, &conferr.Error{File: path, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	type section struct {
		door  *Door
		line  int
		lines map[string]int // postern key → line, for Validate's errors
	}
	var doors []*section
	var cur *section // nil: [options] or before any section
	inOptions := false
	names := map[string]bool{}

	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			end := strings.IndexByte(line, ']')
			if end < 0 {
				fail(n, "", "section header without ]")
				continue
			}
			name := strings.TrimSpace(line[1:end])
			if strings.EqualFold(name, "options") {
				inOptions, cur = true, nil
				continue
			}
			inOptions = false
			if name == "" || names[name] {
				fail(n, "", "door name %q is empty or used twice", name)
			}
			names[name] = true
			cur = &section{door: &Door{Name: name, Knockd: true, SeqTimeout: KnockdSeqTimeout, CmdTimeout: KnockdCmdTimeout},
				line: n, lines: map[string]int{}}
			doors = append(doors, cur)
			continue
		}
		rawKey, value, hasValue := strings.Cut(line, "=")
		key := strings.ToUpper(strings.TrimSpace(rawKey))
		value = strings.TrimSpace(value)
		switch {
		case inOptions:
			switch key {
			case "USESYSLOG":
				c.UseSyslog = true
			case "LOGFILE":
				c.LogFile = value
			case "PIDFILE":
				c.PidFile = value
			case "INTERFACE":
				c.Interface = value
			default:
				fail(n, strings.TrimSpace(rawKey), "unknown [options] directive (UseSyslog, LogFile, PidFile, Interface)")
				continue
			}
			if key != "USESYSLOG" && (!hasValue || value == "") {
				fail(n, strings.TrimSpace(rawKey), "needs a value")
			}
			continue
		case cur == nil:
			fail(n, strings.TrimSpace(rawKey), "directive outside any [section]")
			continue
		}
		d := cur.door
		pkey, known := knockdKeys[key]
		if !known {
			fail(n, strings.TrimSpace(rawKey), "unknown door directive")
			continue
		}
		cur.lines[pkey] = n
		bad := func(format string, args ...any) { fail(n, strings.TrimSpace(rawKey), format, args...) }
		seconds := func() time.Duration {
			s, err := strconv.ParseUint(value, 10, 31)
			if err != nil {
				bad("%q: want a whole number of seconds", value)
				return 0
			}
			return time.Duration(s) * time.Second
		}
		switch pkey {
		case "sequence":
			seq, err := ParseKnockdSequence(value)
			if err != nil {
				bad("%v", err)
			}
			d.Sequence = seq
		case "one_time_sequences":
			ot, err := LoadOneTime(value)
			if err != nil {
				bad("%v", err)
			}
			d.OneTime = ot
		case "seq_timeout":
			d.SeqTimeout = seconds()
		case "cmd_timeout":
			d.CmdTimeout = seconds()
		case "tcp_flags":
			f, err := ParseFlags(value)
			if err != nil {
				bad("%v", err)
			}
			d.Flags = f
		case "start_command":
			d.StartCommand = value
		case "start_command_6":
			d.StartCommand6 = &value
		case "stop_command":
			d.StopCommand = value
		case "stop_command_6":
			d.StopCommand6 = &value
		case "target":
			a, err := netip.ParseAddr(value)
			if err != nil {
				bad("%q is not an IP address", value)
			}
			d.Target = a.Unmap()
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, s := range doors {
		for _, fe := range s.door.Validate() {
			line, ok := s.lines[fe.Key]
			if !ok {
				line = s.line
			}
			fail(line, knockdName(fe.Key), "%s", fe.Msg)
		}
		c.Doors = append(c.Doors, s.door)
	}
	if len(c.Doors) == 0 {
		fail(1, "", "no doors: a knockd.conf needs at least one [section] besides [options]")
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// knockdName gives a knockd spelling of a postern key for messages.
func knockdName(key string) string {
	switch key {
	case "tcp_flags":
		return "TCPFlags"
	case "open":
		return "Start_Command"
	}
	return strings.ToUpper(key[:1]) + key[1:]
}
