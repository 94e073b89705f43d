//go:build !linux

package client

import (
	"errors"
	"net/netip"
)

// Covert knocks write whole IPv4 and IPv6 headers (the IPv4 ID, the IPv6
// flow label carry the message). Only Linux lets a program do both:
// macOS and FreeBSD have no IPV6_HDRINCL, Windows no raw TCP at all.
var errNoRaw = errors.New("covert: covert knocks need raw IP sockets that carry our own IPv4 and IPv6 headers, which only Linux offers; knock from a Linux host or use an SPA knock")

type rawIP struct{}

func openRaw(netip.Addr) (*rawIP, error) { return nil, errNoRaw }

func (*rawIP) Send([]byte) error { return errNoRaw }

func (*rawIP) Close() error { return nil }
