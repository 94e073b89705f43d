package firewall

import (
	"bufio"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Grants with a lifetime in iptables, with ipset's own extensions and no
// packet or connection marks (which belong to the administrator); IPv4
// shown, the chain's other rules as in chainRules:
//
//	-A POSTERN -m conntrack --ctstate ESTABLISHED -m set --match-set postern4-idle-120 src,dst -j SET --add-set postern4-idle-120 src,dst --exist --timeout 120
//	-A POSTERN -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
//	-A POSTERN -m set --match-set postern4 src,dst -j RETURN
//	-A POSTERN -m conntrack --ctstate NEW -m set --match-set postern4-count src,dst --packets-lt 1000001 -j RETURN
//	-A POSTERN -m set --match-set postern4-idle-120 src,dst -m set --match-set postern4-cap src,dst -j RETURN
//	… drops
//
// A counted grant is one element of a set with packet counters. Only a new
// connection's packets reach its rule (established ones returned earlier),
// so the element's counter counts connections; the kernel counts before it
// compares, and the element is added with its counter countCeiling - N, so
// N connections get in and the next is dropped. An idle grant is an
// element of its duration's set, re-added (its timeout refreshed) by every
// established packet, and of the cap set that ends it regardless. The
// chain still only returns: what it lets through goes on to the
// administrator's INPUT rules.

// countCeiling is what a counted grant's element counts up to.
const countCeiling = 1_000_000

// The lifetime sets of family set (IPSet4 or IPSet6). Not under
// ipsetPrefix: those are the gateway's, destroyed with it.
func countSet(set string) string { return set + "-count" }
func capSet(set string) string   { return set + "-cap" }
func idleSet(set string, d time.Duration) string {
	return fmt.Sprintf("%s-idle-%d", set, ipsetSeconds(d))
}

func ipsetSeconds(d time.Duration) int { return int(math.Ceil(d.Seconds())) }

// lifetimeRules returns the rules r's lifetimes add for family set: the
// refreshes, which go before the established return, and the returns,
// which go after the plain grants.
func lifetimeRules(r Rules, set string) (refresh, returns []string) {
	if r.Connections > 0 {
		returns = append(returns, fmt.Sprintf("-m conntrack --ctstate NEW -m set --match-set %s src,dst --packets-lt %d -j RETURN",
			countSet(set), countCeiling+1))
	}
	for _, d := range r.Idle {
		s := idleSet(set, d)
		refresh = append(refresh, fmt.Sprintf("-m conntrack --ctstate ESTABLISHED -m set --match-set %s src,dst -j SET --add-set %s src,dst --exist --timeout %d",
			s, s, ipsetSeconds(d)))
		returns = append(returns, fmt.Sprintf("-m set --match-set %s src,dst -m set --match-set %s src,dst -j RETURN", s, capSet(set)))
	}
	return refresh, returns
}

// lifetimeSets returns the sets r's lifetimes need for family set, and
// whether each keeps packet counters.
func lifetimeSets(r Rules, set string) map[string]bool {
	out := map[string]bool{}
	if r.Connections > 0 {
		out[countSet(set)] = true
	}
	if len(r.Idle) > 0 {
		out[capSet(set)] = false
	}
	for _, d := range r.Idle {
		out[idleSet(set, d)] = false
	}
	return out
}

// createLifetimeSets creates what lifetimeSets names, keeping any that
// exist (and the grants in them).
func (t *IPTables) createLifetimeSets(r Rules, set, family string) error {
	for name, counters := range lifetimeSets(r, set) {
		args := []string{"create", name, "hash:ip,port", "family", family, "timeout", "0"}
		if counters {
			args = append(args, "counters")
		}
		if err := t.createSet(name, args); err != nil {
			return err
		}
	}
	return nil
}

// destroyUnusedLifetimeSets destroys family set's lifetime sets that r no
// longer uses (the chain just refilled no longer names them), with their
// elements: a later Setup that used them again would otherwise bring back
// grants revoked or pruned in between.
func (t *IPTables) destroyUnusedLifetimeSets(r Rules, set string) error {
	names, err := t.run("", "ipset", "list", "-n")
	if err != nil {
		return err
	}
	keep := lifetimeSets(r, set)
	for _, n := range strings.Fields(names) {
		if _, used := keep[n]; strings.HasPrefix(n, set+"-") && !used {
			if out, err := t.run("", "ipset", "destroy", n); err != nil && !strings.Contains(out, "does not exist") {
				return err
			}
		}
	}
	return nil
}

// lifetimeScript writes the ipset restore lines that grant (or, with
// revoke, take back) g's lifetime elements; ok is false for a plain grant.
func (t *IPTables) lifetimeScript(b *strings.Builder, g Grant, revoke bool) (ok bool, err error) {
	set := setFor(g.Addr)
	type elem struct {
		set     string
		timeout time.Duration
		extra   string
	}
	var elems []elem
	switch {
	case g.Connections > 0:
		// Only a new grant must fit the rules set up: a revoke deletes
		// whatever is there (a reload may have lowered the count since).
		if !revoke && g.Connections > t.rules.Connections {
			return true, fmt.Errorf("grant %v: %d connections, the rules set up count %d", g, g.Connections, t.rules.Connections)
		}
		elems = []elem{{countSet(set), g.Timeout, fmt.Sprintf(" packets %d", countCeiling-g.Connections)}}
	case g.Idle > 0:
		if !revoke && !containsDuration(t.rules.Idle, g.Idle) {
			return true, fmt.Errorf("grant %v: idle %v is not in the rules set up", g, g.Idle)
		}
		elems = []elem{{idleSet(set, g.Idle), min(g.Idle, g.Timeout), ""}, {capSet(set), g.Timeout, ""}}
	default:
		return false, nil
	}
	for _, e := range elems {
		if revoke {
			fmt.Fprintf(b, "del %s %s\n", e.set, element(g))
			continue
		}
		fmt.Fprintf(b, "add %s %s timeout %d%s", e.set, element(g), ipsetSeconds(e.timeout), e.extra)
		if t.comments[e.set] && g.Name != "" {
			fmt.Fprintf(b, " comment \"%s\"", ipsetComment(g.Name))
		}
		b.WriteString("\n")
	}
	return true, nil
}

func containsDuration(ds []time.Duration, d time.Duration) bool {
	for _, x := range ds {
		if ipsetSeconds(x) == ipsetSeconds(d) {
			return true
		}
	}
	return false
}

// listLifetimes reads the grants with a lifetime of family set back: a
// counted grant with the connections it has left (none left: used, not
// listed), an idle grant while both its elements live.
func (t *IPTables) listLifetimes(set string) ([]Grant, error) {
	read := func(name string) ([]Grant, []string, error) {
		text, err := t.run("", "ipset", "save", name)
		if err != nil {
			if strings.Contains(text, "does not exist") {
				return nil, nil, nil
			}
			return nil, nil, fmt.Errorf("iptables: %w", err)
		}
		var gs []Grant
		var lines []string
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			if g, ok := parseSetLine(sc.Text()); ok {
				gs = append(gs, g)
				lines = append(lines, sc.Text())
			}
		}
		return gs, lines, nil
	}
	var out []Grant
	if t.rules.Connections > 0 {
		gs, lines, err := read(countSet(set))
		if err != nil {
			return nil, err
		}
		for i, g := range gs {
			if left := countCeiling - packetsOf(lines[i]); left > 0 {
				g.Connections = int(min(left, countCeiling))
				out = append(out, g)
			}
		}
	}
	if len(t.rules.Idle) == 0 {
		return out, nil
	}
	caps, _, err := read(capSet(set))
	if err != nil {
		return nil, err
	}
	capLeft := map[string]time.Duration{}
	for _, c := range caps {
		capLeft[element(c)] = c.Timeout
	}
	for _, d := range t.rules.Idle {
		gs, _, err := read(idleSet(set, d))
		if err != nil {
			return nil, err
		}
		for _, g := range gs {
			if left, ok := capLeft[element(g)]; ok {
				g.Idle, g.Timeout = d, left
				out = append(out, g)
			}
		}
	}
	return out, nil
}

// packetsOf returns the packet counter of an ipset save line (0 without).
func packetsOf(line string) int64 {
	f := strings.Fields(line)
	for i := 3; i+1 < len(f); i++ {
		if f[i] == "packets" {
			n, _ := strconv.ParseInt(f[i+1], 10, 64)
			return n
		}
	}
	return 0
}
