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
	counts := map[string]int{} // array-table path (parents indexed) → entries so far
	var p unstable.Parser
	p.Reset(data)
	prefix := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, line := keyParts(&p, e.Key())
			// Index every parent that is an array of tables with its
			// current entry: [[covert.client]] belongs to the last
			// [[covert]], "covert[1].client[0]".
			k := ""
			for i, part := range parts {
				if k != "" {
					k += "."
				}
				k += part
				last := i == len(parts)-1
				if n, isArray := counts[k]; isArray && !last {
					k = fmt.Sprintf("%s[%d]", k, n-1)
				}
			}
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
	parts, line := keyParts(p, it)
	return strings.Join(parts, "."), line
}

func keyParts(p *unstable.Parser, it unstable.Iterator) ([]string, int) {
	var parts []string
	line := 0
	for it.Next() {
		n := it.Node()
		if line == 0 && n.Raw.Length > 0 {
			line = p.Shape(n.Raw).Start.Line
		}
		parts = append(parts, string(n.Data))
	}
	return parts, line
}
