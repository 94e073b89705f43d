package main

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
)

// runProgram runs a program in the foreground with postern's terminal and
// returns its exit status. Interrupts go to the program (the terminal
// sends them to both): postern waits for it, then does what comes after.
func runProgram(path string, argv []string) (int, error) {
	signal.Ignore(os.Interrupt)
	defer signal.Reset(os.Interrupt)
	c := exec.Command(path, argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := c.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), nil
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}
