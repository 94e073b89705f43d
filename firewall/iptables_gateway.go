package firewall

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/port"
)

// The gateway part of the iptables backend, per family ("4" shown):
//
//	filter POSTERN_FORWARD, jumped to from the top of FORWARD:
//	  -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
//	  -m set --match-set postern-fwd4 src,dst,dst -j ACCEPT   # client, port, inside host
//	  -m conntrack --ctstate DNAT -m set --match-set postern-fwdvia4 src,dst,dst -j ACCEPT   # the same, reached through a port of this host only
//	  -m set --match-set postern-fwdall4 src -j ACCEPT         # forward-all clients (FORWARD_ALL)
//	  -m set --match-set postern-closed4 dst,dst -j DROP       # protected destinations
//	nat POSTERN_DNAT, jumped to from the top of PREROUTING, one rule per
//	translation in use, its clients in a set of their own:
//	  -p tcp --dport 2222 -m addrtype --dst-type LOCAL -m set --match-set postern-d4-1a2b3c4d src -j DNAT --to-destination 10.0.0.5:22
//	nat POSTERN_SNAT, jumped to from the top of POSTROUTING:
//	  -m set --match-set postern-masq4 src,dst,dst -j MASQUERADE
//	  -m set --match-set postern-s4-5e6f7a8b src,dst,dst -j SNAT --to-source 10.0.0.1
//	  -m set --match-set postern-masqall4 src -j MASQUERADE     # and per address for forward-all SNAT
//
// Forward-all DNAT rules have no port: -m addrtype --dst-type LOCAL -m set
// --match-set postern-da4-… src -j DNAT --to-destination 10.0.0.5.
//
// Every set element carries its timeout, so grants expire in the kernel.
// Unlike POSTERN, POSTERN_FORWARD accepts granted connections, as fwknop's
// FWKNOP_FORWARD does: gateways usually drop what they forward by default.
// Translation rules stay when their sets empty (a few bytes each); the
// Keeper's restore adds back what a flush removed.
const (
	IPTablesForward = "POSTERN_FORWARD"
	IPTablesDNAT    = "POSTERN_DNAT"
	IPTablesSNAT    = "POSTERN_SNAT"
	ipsetPrefix     = "postern-"
)

func gwSet(kind string, a netip.Addr) string {
	if a.Unmap().Is4() {
		return ipsetPrefix + kind + "4"
	}
	return ipsetPrefix + kind + "6"
}

// mappingSet names the set of one translation: a digest of what it
// translates to, within ipset's 31 characters.
func mappingSet(kind string, a netip.Addr, what string) string {
	sum := sha256.Sum256([]byte(what))
	fam := "4"
	if !a.Unmap().Is4() {
		fam = "6"
	}
	return ipsetPrefix + kind + fam + "-" + hex.EncodeToString(sum[:4])
}

func hostPort(a netip.Addr, p uint16) string { return netip.AddrPortFrom(a.Unmap(), p).String() }

// dnatRule is the translation of g's external port, and the set of its
// clients.
func dnatRule(g Grant) (set, rule string) {
	to := hostPort(g.To, g.Port.Num)
	set = mappingSet("d", g.Addr, fmt.Sprintf("%s %d %s", g.Port.Proto, g.External, to))
	return set, fmt.Sprintf("-p %s -m %s --dport %d -m addrtype --dst-type LOCAL -m set --match-set %s src -j DNAT --to-destination %s",
		g.Port.Proto, g.Port.Proto, g.External, set, to)
}

func dnatAllRule(g Grant) (set, rule string) {
	set = mappingSet("da", g.Addr, g.To.String())
	return set, fmt.Sprintf("-m addrtype --dst-type LOCAL -m set --match-set %s src -j DNAT --to-destination %s", set, g.To.Unmap())
}

func snatAllRule(g Grant) (set, rule string) {
	set = mappingSet("sa", g.Addr, g.SNAT.String())
	return set, fmt.Sprintf("-m set --match-set %s src -j SNAT --to-source %s", set, g.SNAT)
}

func snatRule(g Grant) (set, rule string) {
	set = mappingSet("s", g.Addr, g.SNAT.String())
	return set, fmt.Sprintf("-m set --match-set %s src,dst,dst -j SNAT --to-source %s", set, g.SNAT)
}

func flowElement(g Grant) string {
	return fmt.Sprintf("%s,%s:%d,%s", g.Addr.Unmap(), g.Port.Proto, g.Port.Num, g.To.Unmap())
}

func forwardRules(fam string) []string {
	return []string{
		"-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
		"-m set --match-set " + ipsetPrefix + "fwd" + fam + " src,dst,dst -j ACCEPT",
		"-m conntrack --ctstate DNAT -m set --match-set " + ipsetPrefix + "fwdvia" + fam + " src,dst,dst -j ACCEPT",
		"-m set --match-set " + ipsetPrefix + "fwdall" + fam + " src -j ACCEPT",
		"-m set --match-set " + ipsetPrefix + "closed" + fam + " dst,dst -j DROP",
	}
}

func famSuffix(family string) string {
	if family == "inet" {
		return "4"
	}
	return "6"
}

// setupGateway installs the gateway part for one family: its sets, the
// forward chain (refilled), the nat chains (created if missing, keeping
// their translations) and the jumps.
func (t *IPTables) setupGateway(r Rules, tables, restore, family string) error {
	fam := famSuffix(family)
	for _, s := range []struct{ name, typ string }{{"fwd", "hash:ip,port,ip"}, {"fwdvia", "hash:ip,port,ip"}, {"masq", "hash:ip,port,ip"},
		{"fwdall", "hash:ip"}, {"masqall", "hash:ip"}} {
		if _, err := t.run("", "ipset", "create", ipsetPrefix+s.name+fam, s.typ, "family", family, "timeout", "0", "-exist"); err != nil {
			return err
		}
	}
	closed := ipsetPrefix + "closed" + fam
	if _, err := t.run("", "ipset", "create", closed, "hash:ip,port", "family", family, "-exist"); err != nil {
		return err
	}
	var script strings.Builder
	fmt.Fprintf(&script, "flush %s\n", closed)
	for _, d := range r.Forwarded {
		if d.Addr.Unmap().Is4() == (fam == "4") {
			fmt.Fprintf(&script, "add %s %s,%s:%d\n", closed, d.Addr.Unmap(), d.Port.Proto, d.Port.Num)
		}
	}
	if _, err := t.run(script.String(), "ipset", "-exist", "restore"); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", IPTablesForward)
	for _, rule := range forwardRules(fam) {
		fmt.Fprintf(&b, "-A %s %s\n", IPTablesForward, rule)
	}
	b.WriteString("COMMIT\n")
	if _, err := t.run(b.String(), restore, "--noflush"); err != nil {
		return err
	}
	for _, c := range []string{IPTablesDNAT, IPTablesSNAT} {
		if _, err := t.run("", tables, "-t", "nat", "-S", c); err != nil {
			if _, err := t.run("", tables, "-t", "nat", "-N", c); err != nil {
				return err
			}
		}
	}
	for _, rule := range masqRules(fam) {
		if err := t.ensureRule(tables, "nat", IPTablesSNAT, strings.Fields(rule)); err != nil {
			return err
		}
	}
	for _, j := range []struct{ table, from, to string }{
		{"filter", "FORWARD", IPTablesForward}, {"nat", "PREROUTING", IPTablesDNAT}, {"nat", "POSTROUTING", IPTablesSNAT},
	} {
		if _, err := t.run("", tables, "-t", j.table, "-C", j.from, "-j", j.to); err != nil {
			if _, err := t.run("", tables, "-t", j.table, "-I", j.from, "1", "-j", j.to); err != nil {
				return err
			}
		}
	}
	return nil
}

// masqRules are POSTERN_SNAT's fixed rules.
func masqRules(fam string) []string {
	return []string{
		"-m set --match-set " + ipsetPrefix + "masq" + fam + " src,dst,dst -j MASQUERADE",
		"-m set --match-set " + ipsetPrefix + "masqall" + fam + " src -j MASQUERADE",
	}
}

// ensureRule appends rule to chain unless it is there.
func (t *IPTables) ensureRule(tables, table, chain string, rule []string) error {
	if _, err := t.run("", tables, append([]string{"-t", table, "-C", chain}, rule...)...); err == nil {
		return nil
	}
	_, err := t.run("", tables, append([]string{"-t", table, "-A", chain}, rule...)...)
	return err
}

func tablesFor(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "iptables"
	}
	return "ip6tables"
}

func ipsetFamily(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "inet"
	}
	return "inet6"
}

// gatewayScript adds g's set elements to script (an ipset restore script,
// del when revoking), and makes sure the translation rules g needs exist.
func (t *IPTables) gatewayScript(script *strings.Builder, g Grant, revoke bool) error {
	add := func(set, elem string) {
		if revoke {
			fmt.Fprintf(script, "del %s %s\n", set, elem)
			return
		}
		fmt.Fprintf(script, "add %s %s timeout %d\n", set, elem, int(math.Ceil(g.Timeout.Seconds())))
	}
	rule := func(set, rule, chain, typ string) error {
		if revoke {
			return nil
		}
		if _, err := t.run("", "ipset", "create", set, typ, "family", ipsetFamily(g.Addr), "timeout", "0", "-exist"); err != nil {
			return err
		}
		return t.ensureRule(tablesFor(g.Addr), "nat", chain, strings.Fields(rule))
	}
	if g.All {
		src := g.Addr.Unmap().String()
		add(gwSet("fwdall", g.Addr), src)
		if g.To.IsValid() {
			set, r := dnatAllRule(g)
			if err := rule(set, r, IPTablesDNAT, "hash:ip"); err != nil {
				return err
			}
			add(set, src)
		}
		switch {
		case g.Masquerade:
			add(gwSet("masqall", g.Addr), src)
		case g.SNAT.IsValid():
			set, r := snatAllRule(g)
			if err := rule(set, r, IPTablesSNAT, "hash:ip"); err != nil {
				return err
			}
			add(set, src)
		}
		return nil
	}
	if g.External != 0 {
		set, r := dnatRule(g)
		if err := rule(set, r, IPTablesDNAT, "hash:ip"); err != nil {
			return err
		}
		add(set, g.Addr.Unmap().String())
	}
	if g.Local {
		add(setFor(g.Addr), element(g))
		return nil
	}
	if g.External != 0 {
		// Reached through this host's port: only DNATed connections pass,
		// never the client going to the inside host directly.
		add(gwSet("fwdvia", g.Addr), flowElement(g))
	} else {
		add(gwSet("fwd", g.Addr), flowElement(g))
	}
	switch {
	case g.Masquerade:
		add(gwSet("masq", g.Addr), flowElement(g))
	case g.SNAT.IsValid():
		set, r := snatRule(g)
		if err := rule(set, r, IPTablesSNAT, "hash:ip,port,ip"); err != nil {
			return err
		}
		add(set, flowElement(g))
	}
	return nil
}

// listGateway reads the gateway grants back: one per fwd element, with its
// translations, and a local NAT grant per DNAT client no fwd element
// explains.
//
// Long on purpose: one pass over the sets and the nat rules rebuilds every kind of gateway grant from maps the kinds share.
func (t *IPTables) listGateway() ([]Grant, error) {
	var out []Grant
	for _, f := range families {
		fam := famSuffix(f.family)
		save := func(set string) ([]string, error) {
			text, err := t.run("", "ipset", "save", set)
			if err != nil {
				if strings.Contains(text, "does not exist") {
					return nil, nil
				}
				return nil, err
			}
			var lines []string
			sc := bufio.NewScanner(strings.NewReader(text))
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "add ") {
					lines = append(lines, sc.Text())
				}
			}
			return lines, nil
		}
		fwd, err := save(ipsetPrefix + "fwd" + fam)
		if err != nil {
			return nil, err
		}
		via, err := save(ipsetPrefix + "fwdvia" + fam)
		if err != nil {
			return nil, err
		}
		fwd = append(fwd, via...) // the DNAT rules say which were reached through a port
		masq, err := save(ipsetPrefix + "masq" + fam)
		if err != nil {
			return nil, err
		}
		masqueraded := map[string]bool{}
		for _, l := range masq {
			masqueraded[strings.Fields(l)[2]] = true
		}
		fwdAll, err := save(ipsetPrefix + "fwdall" + fam)
		if err != nil {
			return nil, err
		}
		masqAll, err := save(ipsetPrefix + "masqall" + fam)
		if err != nil {
			return nil, err
		}
		for _, l := range masqAll {
			masqueraded["all "+strings.Fields(l)[2]] = true
		}
		// Translations from the nat chains' rules.
		snatTo := map[string]netip.Addr{}
		type target struct {
			src, to netip.Addr
			port    port.Spec
		}
		external := map[target]uint16{}
		dnatAllTo := map[string]netip.Addr{}
		var dnats []Grant
		for _, c := range []string{IPTablesDNAT, IPTablesSNAT} {
			text, err := t.run("", f.tables, "-t", "nat", "-S", c)
			if err != nil {
				continue
			}
			for _, line := range strings.Split(text, "\n") {
				fs := strings.Fields(line)
				set := fieldAfter(fs, "--match-set")
				if len(fs) < 2 || fs[0] != "-A" || set == "" || strings.HasSuffix(set, "masq"+fam) || strings.HasSuffix(set, "masqall"+fam) {
					continue
				}
				allRule := fieldAfter(fs, set) == "src" // forward-all: keyed by the client alone
				members, err := save(set)
				if err != nil {
					return nil, err
				}
				if c == IPTablesSNAT {
					a, err := netip.ParseAddr(fieldAfter(fs, "--to-source"))
					if err != nil {
						continue
					}
					for _, m := range members {
						k := strings.Fields(m)[2]
						if allRule {
							k = "all " + k
						}
						snatTo[k] = a
					}
					continue
				}
				if allRule && c == IPTablesDNAT && fieldAfter(fs, "--dport") == "" {
					if to, err := netip.ParseAddr(fieldAfter(fs, "--to-destination")); err == nil {
						for _, m := range members {
							dnatAllTo["all "+strings.Fields(m)[2]] = to
						}
					}
					continue
				}
				to, err := netip.ParseAddrPort(fieldAfter(fs, "--to-destination"))
				proto, err2 := port.ParseProtocol(fieldAfter(fs, "-p"))
				ext, err3 := strconv.ParseUint(fieldAfter(fs, "--dport"), 10, 16)
				if err != nil || err2 != nil || err3 != nil {
					continue
				}
				for _, m := range members {
					mf := strings.Fields(m)
					src, err := netip.ParseAddr(mf[2])
					if err != nil {
						continue
					}
					g := Grant{Addr: src, To: to.Addr(), Port: port.Spec{Proto: proto, Num: to.Port()}, External: uint16(ext), Local: true}
					g.Timeout = timeoutField(mf)
					external[target{g.Addr, g.To, g.Port}] = g.External
					dnats = append(dnats, g)
				}
			}
		}
		explained := map[target]bool{}
		for _, l := range fwd {
			fs := strings.Fields(l)
			parts := strings.Split(fs[2], ",")
			if len(parts) != 3 {
				continue
			}
			src, err := netip.ParseAddr(parts[0])
			to, err2 := netip.ParseAddr(parts[2])
			proto, num, _ := strings.Cut(parts[1], ":")
			p, err3 := port.Parse(proto + "/" + num)
			if err != nil || err2 != nil || err3 != nil {
				continue
			}
			g := Grant{Addr: src, To: to, Port: p, Timeout: timeoutField(fs), Masquerade: masqueraded[fs[2]], SNAT: snatTo[fs[2]]}
			k := target{src, to, p}
			g.External, explained[k] = external[k], true
			out = append(out, g)
		}
		for _, g := range dnats {
			if !explained[target{g.Addr, g.To, g.Port}] {
				out = append(out, g)
			}
		}
		for _, l := range fwdAll {
			fs := strings.Fields(l)
			src, err := netip.ParseAddr(fs[2])
			if err != nil {
				continue
			}
			k := "all " + fs[2]
			out = append(out, Grant{Addr: src, All: true, To: dnatAllTo[k], Masquerade: masqueraded[k], SNAT: snatTo[k],
				Timeout: timeoutField(fs)})
		}
	}
	return out, nil
}

func fieldAfter(fs []string, flag string) string {
	i := slices.Index(fs, flag)
	if i < 0 || i+1 >= len(fs) {
		return ""
	}
	return fs[i+1]
}

func timeoutField(fs []string) time.Duration {
	s, _ := strconv.Atoi(fieldAfter(fs, "timeout"))
	return time.Duration(s) * time.Second
}

// auditGateway checks one family's gateway part.
func (t *IPTables) auditGateway(d *Damage, f struct{ tables, restore, set, family string }, sets []string) {
	fam := famSuffix(f.family)
	for _, s := range []string{"fwd", "fwdvia", "masq", "fwdall", "masqall"} {
		if !slices.Contains(sets, ipsetPrefix+s+fam) {
			d.add("ipset "+ipsetPrefix+s+fam, true)
		}
	}
	if !slices.Contains(sets, ipsetPrefix+"closed"+fam) {
		d.add("ipset "+ipsetPrefix+"closed"+fam, false)
	}
	text, err := t.run("", f.tables, "-S", IPTablesForward)
	if err != nil {
		d.add(f.tables+" chain "+IPTablesForward, false)
	} else {
		var rules []string
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, "-A ") {
				rules = append(rules, l)
			}
		}
		want := forwardRules(fam)
		same := len(rules) == len(want)
		for i := 0; same && i < len(rules); i++ {
			same = lastField(rules[i]) == lastField(want[i])
		}
		if !same {
			d.add(f.tables+" chain "+IPTablesForward+" rules", false)
		}
	}
	for _, j := range []struct{ table, from, to string }{
		{"filter", "FORWARD", IPTablesForward}, {"nat", "PREROUTING", IPTablesDNAT}, {"nat", "POSTROUTING", IPTablesSNAT},
	} {
		if _, err := t.run("", f.tables, "-t", j.table, "-C", j.from, "-j", j.to); err != nil {
			// A lost nat chain loses its translations: grants to put back.
			d.add(f.tables+" jump "+j.from+" → "+j.to, j.table == "nat")
		}
	}
	for _, rule := range masqRules(fam) {
		if _, err := t.run("", f.tables, append([]string{"-t", "nat", "-C", IPTablesSNAT}, strings.Fields(rule)...)...); err != nil {
			d.add(f.tables+" chain "+IPTablesSNAT+" masquerade rules", true)
			break
		}
	}
}

// cleanupGateway removes one family's gateway chains and jumps.
func (t *IPTables) cleanupGateway(tables string) []error {
	var errs []error
	for _, j := range []struct{ table, from, to string }{
		{"filter", "FORWARD", IPTablesForward}, {"nat", "PREROUTING", IPTablesDNAT}, {"nat", "POSTROUTING", IPTablesSNAT},
	} {
		for {
			if _, err := t.run("", tables, "-t", j.table, "-D", j.from, "-j", j.to); err != nil {
				break
			}
		}
		if _, err := t.run("", tables, "-t", j.table, "-F", j.to); err == nil {
			if _, err := t.run("", tables, "-t", j.table, "-X", j.to); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// destroyGatewaySets destroys every postern- set (after the chains that
// use them are gone).
func (t *IPTables) destroyGatewaySets() error {
	names, err := t.run("", "ipset", "list", "-n")
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range strings.Fields(names) {
		if strings.HasPrefix(n, ipsetPrefix) {
			if _, err := t.run("", "ipset", "destroy", n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
