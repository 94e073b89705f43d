package config

import (
	_ "embed"
	"fmt"
	"strings"
)

//go:embed reference.toml
var reference string

// ManPage renders postern.toml(5) from reference.toml, the file that lists
// every key with its comment (a test parses it), so the manual and the
// reference cannot disagree.
func ManPage(version string) string {
	var b strings.Builder
	esc := func(s string) string {
		s = strings.ReplaceAll(s, `\`, `\e`)
		if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
			s = `\&` + s
		}
		return s
	}
	fmt.Fprintf(&b, ".TH POSTERN.TOML 5 \"\" \"postern %s\" \"postern\"\n", strings.TrimPrefix(version, "v"))
	b.WriteString(".SH NAME\npostern.toml \\- configuration of the postern daemon\n")
	b.WriteString(".SH SYNOPSIS\n/etc/postern/postern.toml\n")
	b.WriteString(".SH DESCRIPTION\nThe daemon reads one TOML file, strictly: an unknown key or a bad value is an " +
		"error naming the file, line and key, and changes nothing. " +
		"\\fBpostern check-config\\fR validates a file; \\fBpostern reload\\fR puts it in force.\n" +
		"Below, every key with its default, as in the reference file shipped with postern.\n")
	section := "TOP-LEVEL KEYS"
	b.WriteString(".SH " + section + "\n")
	var comment []string
	flush := func(key string) {
		fmt.Fprintf(&b, ".TP\n.B %s\n", strings.ReplaceAll(esc(key), `"`, `\(dq`))
		for _, c := range comment {
			b.WriteString(esc(c) + "\n")
		}
		comment = nil
	}
	lines := strings.Split(reference, "\n")
	for i, line := range lines {
		t := strings.TrimSpace(line)
		switch {
		case i < 3 && strings.HasPrefix(t, "#"): // the file's own heading
		case t == "":
			if len(comment) > 0 {
				b.WriteString(".PP\n" + esc(strings.Join(comment, "\n")) + "\n")
				comment = nil
			}
		case strings.HasPrefix(t, "#"):
			comment = append(comment, strings.TrimSpace(strings.TrimPrefix(t, "#")))
		case strings.HasPrefix(t, "["):
			if len(comment) > 0 {
				b.WriteString(".PP\n" + esc(strings.Join(comment, "\n")) + "\n")
				comment = nil
			}
			fmt.Fprintf(&b, ".SH %s\n", esc(strings.ToUpper(t)))
		default:
			flush(t)
		}
	}
	b.WriteString(".SH SEE ALSO\n.BR postern (8)\n")
	return b.String()
}
