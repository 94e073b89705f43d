package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// CheckTrusted refuses a directory or file that another user could have
// written — owned by someone other than this process's user, writable by
// group or others, or (for files) a symbolic link — as sshd's StrictModes
// does for ~/.ssh: the daemon runs what its state files say (pending stop
// commands) as root. A path that does not exist is fine.
func CheckTrusted(path string, dir bool) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	what := "file"
	if dir {
		what = "directory"
	}
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s: a symbolic link where a state %s belongs; refusing it", path, what)
	case dir != st.IsDir():
		return fmt.Errorf("%s: not a %s", path, what)
	case st.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s: state %s is writable by group or others (mode %04o); refusing it: chmod go-w %s",
			path, what, st.Mode().Perm(), path)
	}
	if uid, ok := owner(st); ok && uid != os.Geteuid() {
		return fmt.Errorf("%s: state %s is owned by uid %d, not by this user (uid %d); refusing it",
			path, what, uid, os.Geteuid())
	}
	return nil
}
