// Package mode names the firewall backends postern can drive. It is a
// package of its own, with no kernel code, so that the configuration (which
// builds on every platform the client runs on) can hold a typed choice;
// firewall.New is the one place that turns a Mode into a backend.
package mode

// Mode is a firewall backend.
type Mode string

// The backends.
const (
	NFTables Mode = "nftables" // table inet postern (the default)
	IPTables Mode = "iptables" // chain POSTERN and ipsets
	None     Mode = "none"     // nothing changes; decisions are only logged (a dry run)
)

// Default is the backend of a configuration that names none.
const Default = NFTables

// All lists the backends, for messages.
var All = []Mode{NFTables, IPTables, None}

// Parse returns the Mode named s.
func Parse(s string) (Mode, bool) {
	for _, m := range All {
		if string(m) == s {
			return m, true
		}
	}
	return "", false
}

// Kernel reports whether the backend changes the kernel's firewall.
func (m Mode) Kernel() bool { return m == NFTables || m == IPTables }

// Events reports whether the kernel tells of changes to what the backend
// installed (nftables' notifications); without them only the audit sees
// a flush.
func (m Mode) Events() bool { return m == NFTables }

// ForwardByOriginalPort reports whether the backend can match a forwarded
// connection by its port before DNAT ([gateway] published: ipset cannot).
func (m Mode) ForwardByOriginalPort() bool { return m == NFTables }
