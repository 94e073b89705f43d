// Package conferr is the error every configuration reader returns: a
// problem at a place in a file, printed "file:line: key: message" so that
// a person can go straight to it. postern.toml, knockd.conf, access.conf
// and client files all report this way.
package conferr

import (
	"fmt"
	"strings"
)

// Error is a problem at a place in a file.
type Error struct {
	File string
	Line int    // 0: the problem has no line (a key missing from the file)
	Key  string // the setting or keyword, if the problem is with one
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	return b.String() + ": " + e.Msg
}

// Errors is every problem found in one file, one per line.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}
