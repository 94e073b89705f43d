package fko

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
)

// RCValue is one "VAR value" line of a .fwknoprc.
type RCValue struct {
	Value string
	File  string
	Line  int
}

// RC is a parsed .fwknoprc: stanza name → variable → value. "default" is
// the [default] stanza.
type RC map[string]map[string]RCValue

// ReadRC reads a .fwknoprc file.
func ReadRC(path string) (RC, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseRC(path, data)
}

// ParseRC reads .fwknoprc text: [stanza] headers and "VAR value" lines,
// '#' comments. Variable names are upper-cased.
func ParseRC(path string, data []byte) (RC, error) {
	rc := RC{}
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			end := strings.IndexByte(line, ']')
			if end < 2 {
				return nil, fmt.Errorf("%s:%d: bad stanza header", path, n)
			}
			cur = strings.TrimSpace(line[1:end])
			if rc[cur] == nil {
				rc[cur] = map[string]RCValue{}
			}
			continue
		}
		if cur == "" {
			return nil, fmt.Errorf("%s:%d: variable outside any [stanza]", path, n)
		}
		name, value, _ := strings.Cut(strings.ReplaceAll(line, "\t", " "), " ")
		// fwknop also takes "VAR: value".
		name = strings.TrimSuffix(name, ":")
		rc[cur][strings.ToUpper(name)] = RCValue{Value: strings.TrimSpace(value), File: path, Line: n}
	}
	return rc, sc.Err()
}
