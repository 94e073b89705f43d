package config

import (
	"errors"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// DecodeError turns a go-toml decoding error into file:line:key errors;
// other TOML files of postern (client.toml) report through it too.
func DecodeError(path string, err error) error { return DecodeErrorFor(path, err, nil) }

// DecodeErrorFor is DecodeError knowing what the file decodes into, so an
// unknown key can be explained: a key of the top level written under a
// table (TOML puts every key after [[client]] into that client), or a
// near miss of a key that exists there.
func DecodeErrorFor(path string, err error, target any) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var es Errors
		for _, e := range strict.Errors {
			line, _ := e.Position()
			key := e.Key()
			es = append(es, &Error{File: path, Line: line, Key: strings.Join(key, "."), Msg: "unknown key" + unknownKeyHint(target, key)})
		}
		return es
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		return &Error{File: path, Line: line, Key: strings.Join(de.Key(), "."), Msg: typeMessage(strings.TrimPrefix(de.Error(), "toml: "))}
	}
	return &Error{File: path, Msg: err.Error()}
}

func unknownKeyHint(target any, key []string) string {
	if target == nil || len(key) == 0 {
		return ""
	}
	root := reflect.TypeOf(target)
	name := key[len(key)-1]
	if len(key) > 1 && slices.Contains(tomlKeys(root, nil), name) {
		header := "[" + key[0] + "]"
		if isArrayOfTables(root, key[0]) {
			header = "[" + header + "]"
		}
		return "; " + name + " is a top-level key: TOML puts every key after a " + header + " header into that table, so move it above the first table"
	}
	var near []string
	for _, k := range tomlKeys(root, key[:len(key)-1]) {
		if editDistance(k, name) <= 2 || strings.Contains(k, name) || strings.Contains(name, k) {
			near = append(near, k)
		}
	}
	if len(near) > 0 {
		return "; did you mean " + strings.Join(near, " or ") + "?"
	}
	return ""
}

func isArrayOfTables(t reflect.Type, key string) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return false
	}
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); tag == key {
			return t.Field(i).Type.Kind() == reflect.Slice
		}
	}
	return false
}

// tomlKeys returns the keys of the table at path in a struct type t.
func tomlKeys(t reflect.Type, path []string) []string {
	for {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
		var keys []string
		var next reflect.Type
		for i := range t.NumField() {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			keys = append(keys, tag)
			if len(path) > 0 && tag == path[0] {
				next = f.Type
			}
		}
		if len(path) == 0 {
			return keys
		}
		if next == nil {
			return nil
		}
		t, path = next, path[1:]
	}
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// go-toml says "cannot decode TOML integer into struct field
// config.rawDoor.Open of type string": the user wrote the value, not the
// struct.
var decodeType = regexp.MustCompile(`^cannot decode TOML (\w+) into .* of type (\S+)$`)

func typeMessage(msg string) string {
	m := decodeType.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	want := map[string]string{
		"string": "a string in double quotes", "[]string": "a list of strings, like [\"tcp/22\"]",
		"bool": "true or false", "int": "a whole number", "int64": "a whole number", "uint16": "a whole number",
		"float64": "a number",
	}[m[2]]
	if want == "" {
		want = "another kind of value"
	}
	return "want " + want + ", not a TOML " + m[1]
}
