package config

import (
	"fmt"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// keyLines maps every key of a TOML document to the line it is on, so that
// validation errors found after decoding can still name a line. Keys are
// dotted paths; array-of-tables entries carry their index: "client[0].allow".
// A table header maps to its own line under its path ("spa", "client[1]").
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	counts := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	prefix := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			k, line := joinKey(&p, e.Key())
			if e.Kind == unstable.ArrayTable {
				i := counts[k]
				counts[k]++
				k = fmt.Sprintf("%s[%d]", k, i)
			}
			prefix = k
			lines[k] = line
		case unstable.KeyValue:
			k, line := joinKey(&p, e.Key())
			if prefix != "" {
				k = prefix + "." + k
			}
			lines[k] = line
		}
	}
	return lines // a syntax error stops the walk; the decoder reports it
}

func joinKey(p *unstable.Parser, it unstable.Iterator) (string, int) {
	var parts []string
	line := 0
	for it.Next() {
		n := it.Node()
		if line == 0 && n.Raw.Length > 0 {
			line = p.Shape(n.Raw).Start.Line
		}
		parts = append(parts, string(n.Data))
	}
	return strings.Join(parts, "."), line
}
