package main

import (
	"slices"
	"testing"
)

// postern ssh NAME takes ssh's options and a remote command in any order
// ssh users type them; the host goes between.
func TestSplitSSHArgs(t *testing.T) {
	for _, tt := range []struct {
		args, opts, command []string
	}{
		{nil, nil, nil},
		{[]string{"uptime"}, nil, []string{"uptime"}},
		{[]string{"-o", "BatchMode=yes", "uptime", "-a"}, []string{"-o", "BatchMode=yes"}, []string{"uptime", "-a"}},
		{[]string{"-oBatchMode=yes", "-v", "ls"}, []string{"-oBatchMode=yes", "-v"}, []string{"ls"}},
		{[]string{"-vp", "2222", "ls"}, []string{"-vp", "2222"}, []string{"ls"}},
		{[]string{"-A", "-L", "8080:localhost:80"}, []string{"-A", "-L", "8080:localhost:80"}, nil},
		{[]string{"-t", "--", "-weird"}, []string{"-t"}, []string{"-weird"}},
		{[]string{"-i"}, []string{"-i"}, nil}, // ssh says what is missing
	} {
		opts, command := splitSSHArgs(tt.args)
		if !slices.Equal(opts, tt.opts) || !slices.Equal(command, tt.command) {
			t.Errorf("%q: options %q, command %q; want %q, %q", tt.args, opts, command, tt.opts, tt.command)
		}
	}
}
