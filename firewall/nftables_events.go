package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Events calls changed whenever a process other than this one changes
// anything in table inet postern (deletes the table, a chain, a rule or a
// set, flushes the ruleset, deletes an element), until ctx ends. The
// Keeper then audits at once instead of at its next tick, so a flushed
// table is back within milliseconds. It reads nftables' own notifications
// (the multicast group nft monitor reads): each transaction ends with a
// NEWGEN message naming the process that made it, which is how this
// daemon's own grants are told apart. A lost notification (the socket
// overran) counts as a change.
func (n *NFTables) Events(ctx context.Context, changed func()) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("nftables events: %w", err)
	}
	defer c.Close()
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		return fmt.Errorf("nftables events: %w", err)
	}
	// A grant storm of our own must not overrun it: the kernel may drop
	// whatever does not fit, and says so with ENOBUFS.
	c.SetReadBuffer(4 << 20)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	self := uint32(os.Getpid())
	ours := false // the transaction being read touched table inet postern
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.ENOBUFS) {
				changed()
				continue
			}
			return fmt.Errorf("nftables events: %w", err)
		}
		for _, m := range msgs {
			if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
				continue
			}
			switch typ := uint16(m.Header.Type) & 0xff; typ {
			case unix.NFT_MSG_NEWGEN:
				if ours && genPID(m.Data[4:]) != self {
					changed()
				}
				ours = false
			default:
				// Tables, chains, rules, sets and element lists all
				// name their table in attribute 1.
				if !ours && tableOf(m.Data[4:]) == TableName {
					ours = true
				}
			}
		}
	}
}

// tableOf returns attribute 1 (the table's name) of a notification.
func tableOf(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == 1 {
			return ad.String()
		}
	}
	return ""
}

// genPID returns the pid a NEWGEN notification names (0 if none).
func genPID(b []byte) uint32 {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_PROC_PID {
			return ad.Uint32()
		}
	}
	return 0
}
