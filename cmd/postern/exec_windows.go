package main

import (
	"errors"
	"os"
	"os/exec"
)

// execProgram runs the program (postern ssh → ssh) with postern's
// terminal and exits with its status: Windows has no exec(2).
func execProgram(path string, argv []string) error {
	c := exec.Command(path, argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := c.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.ExitCode())
	}
	if err == nil {
		os.Exit(0)
	}
	return err
}

// writeSecret writes a key file for its owner only (NTFS ACLs are not
// changed: the mode bits are all Windows has to offer here).
func writeSecret(path string, data []byte) error { return writeSecretFlags(path, data, 0) }
