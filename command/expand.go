package command

import (
	"fmt"
	"net/netip"
	"strings"
)

// Expand replaces every %IP% in cmd with addr. The address comes from a
// parsed packet, so its text is only hex digits, dots and colons; an address
// with a zone (which could carry any text) is refused.
func Expand(cmd string, addr netip.Addr) (string, error) {
	if !addr.IsValid() || addr.Zone() != "" {
		return "", fmt.Errorf("refusing to put %q into a command", addr)
	}
	return strings.ReplaceAll(cmd, "%IP%", addr.Unmap().String()), nil
}
