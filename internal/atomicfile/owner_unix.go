//go:build unix

package atomicfile

import (
	"io/fs"
	"syscall"
)

// owner returns the uid that owns a file.
func owner(st fs.FileInfo) (int, bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(sys.Uid), true
}
