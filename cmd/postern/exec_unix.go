//go:build unix

package main

import (
	"os"
	"syscall"
)

// execProgram replaces postern with the program (postern ssh → ssh), so
// the terminal, signals and exit status are ssh's own.
func execProgram(path string, argv []string) error { return syscall.Exec(path, argv, os.Environ()) }

// writeSecret writes a key file that only its owner may read, also when
// it exists already with a looser mode; a symbolic link there is refused.
func writeSecret(path string, data []byte) error {
	return writeSecretFlags(path, data, syscall.O_NOFOLLOW)
}
