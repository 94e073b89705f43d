//go:build !linux

package main

import (
	"errors"
	"io"
	"runtime"
)

// The daemon's commands need Linux (AF_PACKET capture, nftables or
// iptables); elsewhere postern is a client.
var errLinuxOnly = errors.New("this command runs the postern daemon or manages its firewall, which needs Linux; on " +
	runtime.GOOS + " postern is a client (knock, fwknop, proxy, ssh, genkey, pubkey)")

func serve(string, bool, io.Writer) error { return errLinuxOnly }
func reloadCmd(string, io.Writer) error   { return errLinuxOnly }
func setupCmd(string, io.Writer) error    { return errLinuxOnly }
func status(bool, io.Writer) error        { return errLinuxOnly }
func cleanup(bool, io.Writer) error       { return errLinuxOnly }
func revokeCmd([]string, io.Writer) error { return errLinuxOnly }
