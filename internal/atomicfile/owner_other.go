//go:build !unix

package atomicfile

import "io/fs"

// owner: files have no uid here (Windows); only the mode checks apply.
func owner(fs.FileInfo) (int, bool) { return 0, false }
