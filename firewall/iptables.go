package firewall

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/port"
)

// Names of what the iptables backend owns.
const (
	IPTablesChain = "POSTERN"
	IPSet4        = "postern4"
	IPSet6        = "postern6"
)

// IPTables is the backend for hosts that use iptables: one chain, POSTERN,
// jumped to from the top of INPUT in iptables and ip6tables, and two ipsets
// (hash:ip,port) whose elements carry their own timeouts, so grants expire
// in the kernel as with nftables:
//
//	-A POSTERN -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
//	-A POSTERN -m set --match-set postern4 src,dst -j RETURN
//	-A POSTERN -p tcp --dport 22 -m comment --comment postern-protected -j DROP
//	-A POSTERN -p udp --dport 62201 -j DROP        # each knock port and range
//
// The chain only drops or returns, never accepts: granted and established
// traffic goes on to the administrator's own INPUT rules, so a ban added
// there still cuts it, exactly as the nftables table (whose accept ends
// only its own chain) behaves.
//
// It runs the iptables-restore, iptables and ipset programs through the
// function it is given (constructor injection: tests run them inside a
// namespace). The chain is replaced atomically by iptables-restore
// --noflush; other chains are never touched.
type IPTables struct {
	command func(name string, args ...string) *exec.Cmd

	mu       sync.Mutex
	comments map[string]bool // whether each set keeps element comments (names)
	rules    Rules           // what the last Setup installed: the lifetime sets grants go to
}

// NewIPTables returns the backend; a nil command runs programs directly.
func NewIPTables(command func(name string, args ...string) *exec.Cmd) *IPTables {
	if command == nil {
		command = exec.Command
	}
	return &IPTables{command: command, comments: map[string]bool{}}
}

func (t *IPTables) run(stdin, name string, args ...string) (string, error) {
	c := t.command(name, args...)
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

var families = []struct{ tables, restore, set, family string }{
	{"iptables", "iptables-restore", IPSet4, "inet"},
	{"ip6tables", "ip6tables-restore", IPSet6, "inet6"},
}

// protectedComment marks the DROP rules of protected ports, so that
// Installed can tell them from knock ports.
const protectedComment = "postern-protected"

// chainRules is the chain's content for one family, as iptables-restore
// takes it.
func chainRules(r Rules, set string) []string {
	refresh, returns := lifetimeRules(r, set)
	rules := append(refresh,
		"-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
		"-m set --match-set "+set+" src,dst -j RETURN",
	)
	rules = append(rules, returns...)
	for _, p := range r.Protected {
		rules = append(rules, fmt.Sprintf("-p %s --dport %d -m comment --comment %s -j DROP", p.Proto, p.Num, protectedComment))
	}
	for _, p := range r.Knock {
		rules = append(rules, fmt.Sprintf("-p %s --dport %d -j DROP", p.Proto, p.Num))
	}
	for _, pr := range r.KnockRanges {
		rules = append(rules, fmt.Sprintf("-p %s --dport %d:%d -j DROP", pr.Proto, pr.Lo, pr.Hi))
	}
	return rules
}

// Setup implements Backend: the sets are created if missing (keeping live
// grants), the chain is declared and refilled in one iptables-restore
// transaction per family, and the jump from INPUT is added once. The
// gateway part comes after, only when in use (a part left by an earlier
// configuration goes), so that whatever it needs, the host's ports are
// closed first.
func (t *IPTables) Setup(r Rules) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rules = r
	for _, f := range families {
		if err := t.createSet(f.set, []string{"create", f.set, "hash:ip,port", "family", f.family, "timeout", "0"}); err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		if err := t.createLifetimeSets(r, f.set, f.family); err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		var b strings.Builder
		// Declaring the chain with --noflush empties it first, inside
		// the same transaction that refills it.
		fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", IPTablesChain)
		for _, rule := range chainRules(r, f.set) {
			fmt.Fprintf(&b, "-A %s %s\n", IPTablesChain, rule)
		}
		b.WriteString("COMMIT\n")
		if _, err := t.run(b.String(), f.restore, "--noflush"); err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		if _, err := t.run("", f.tables, "-C", "INPUT", "-j", IPTablesChain); err != nil {
			if _, err := t.run("", f.tables, "-I", "INPUT", "1", "-j", IPTablesChain); err != nil {
				return fmt.Errorf("iptables: %w", err)
			}
		}
		if err := t.destroyUnusedLifetimeSets(r, f.set); err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
	}
	if !r.UsesGateway() {
		var errs []error
		for _, f := range families {
			errs = append(errs, t.cleanupGateway(f.tables)...)
		}
		if len(errs) == 0 {
			errs = append(errs, t.destroyGatewaySets())
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("iptables: removing the gateway part: %w", err)
		}
		return nil
	}
	if r.Published {
		// ipset matches what the packet carries; the port a connection
		// had before someone else's DNAT is conntrack's alone.
		return errors.New("iptables: closing published ports (gateway.published) needs the nftables backend")
	}
	for _, f := range families {
		if err := t.setupGateway(r, f.tables, f.restore, f.family); err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
	}
	return nil
}

// createSet creates a grant set (create names it and its type) with
// element comments (client names for status); a set left by an older
// postern without them is kept as it is.
func (t *IPTables) createSet(set string, create []string) error {
	_, err := t.run("", "ipset", append(create, "comment", "-exist")...)
	if err == nil {
		t.comments[set] = true
		return nil
	}
	if _, err2 := t.run("", "ipset", append(create, "-exist")...); err2 != nil {
		return err
	}
	t.comments[set] = false
	return nil
}

func setFor(a netip.Addr) string {
	if a.Unmap().Is4() {
		return IPSet4
	}
	return IPSet6
}

func element(g Grant) string {
	return fmt.Sprintf("%s,%s:%d", g.Addr.Unmap(), g.Port.Proto, g.Port.Num)
}

// Grant implements Backend; ipset's -exist replaces the timeout of an
// element that is there. All grants go to one `ipset restore`: a process
// per grant would cap a restore of thousands at a few hundred a second.
func (t *IPTables) Grant(gs []Grant) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var script strings.Builder
	for _, g := range gs {
		if g.Timeout < time.Second {
			return fmt.Errorf("iptables: grant %v: ipset timeouts are whole seconds", g)
		}
		if g.Forwarded() || g.Local {
			if err := t.gatewayScript(&script, g, false); err != nil {
				return fmt.Errorf("iptables: granting %v: %w", g, err)
			}
			continue
		}
		if ok, err := t.lifetimeScript(&script, g, false); ok {
			if err != nil {
				return fmt.Errorf("iptables: %w", err)
			}
			continue
		}
		set := setFor(g.Addr)
		fmt.Fprintf(&script, "add %s %s timeout %d", set, element(g), int(math.Ceil(g.Timeout.Seconds())))
		if t.comments[set] && g.Name != "" {
			fmt.Fprintf(&script, " comment \"%s\"", ipsetComment(g.Name))
		}
		script.WriteString("\n")
	}
	if script.Len() == 0 {
		return nil
	}
	if _, err := t.run(script.String(), "ipset", "-exist", "restore"); err != nil {
		return fmt.Errorf("iptables: granting: %w", err)
	}
	return nil
}

// ipsetComment keeps a name to what an ipset restore line can carry
// between double quotes.
func ipsetComment(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < 0x20 || r == 0x7f {
			return '_'
		}
		return r
	}, name)
}

// Revoke implements Backend.
func (t *IPTables) Revoke(gs []Grant) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var script strings.Builder
	for _, g := range gs {
		if g.Forwarded() || g.Local {
			t.gatewayScript(&script, g, true)
			continue
		}
		if ok, _ := t.lifetimeScript(&script, g, true); ok { // a revoke never errs
			continue
		}
		fmt.Fprintf(&script, "del %s %s\n", setFor(g.Addr), element(g))
	}
	if script.Len() == 0 {
		return nil
	}
	if _, err := t.run(script.String(), "ipset", "-exist", "restore"); err != nil {
		return fmt.Errorf("iptables: revoking: %w", err)
	}
	return nil
}

// List implements Backend from ipset's save format:
// "add postern4 198.18.0.2,tcp:22 timeout 27".
func (t *IPTables) List() ([]Grant, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Grant
	for _, f := range families {
		text, err := t.run("", "ipset", "save", f.set)
		if err != nil {
			if strings.Contains(text, "does not exist") {
				continue
			}
			return nil, fmt.Errorf("iptables: %w", err)
		}
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			g, ok := parseSetLine(sc.Text())
			if ok {
				out = append(out, g)
			}
		}
		lt, err := t.listLifetimes(f.set)
		if err != nil {
			return nil, err
		}
		out = append(out, lt...)
	}
	gw, err := t.listGateway()
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	return append(out, gw...), nil
}

func parseSetLine(line string) (Grant, bool) {
	f := strings.Fields(line)
	if len(f) < 3 || f[0] != "add" {
		return Grant{}, false
	}
	addr, svc, ok := strings.Cut(f[2], ",")
	proto, num, ok2 := strings.Cut(svc, ":")
	a, err := netip.ParseAddr(addr)
	p, err2 := port.ParseProtocol(proto)
	n, err3 := strconv.ParseUint(num, 10, 16)
	if !ok || !ok2 || err != nil || err2 != nil || err3 != nil {
		return Grant{}, false
	}
	g := Grant{Addr: a, Port: port.Spec{Proto: p, Num: uint16(n)}}
	for i := 3; i+1 < len(f); i++ {
		switch f[i] {
		case "timeout":
			s, _ := strconv.Atoi(f[i+1])
			g.Timeout = time.Duration(s) * time.Second
		case "comment":
			g.Name = strings.Trim(f[i+1], `"`)
		}
	}
	return g, true
}

// Cleanup implements Backend: the jumps, the chain and the sets go.
func (t *IPTables) Cleanup() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, f := range families {
		for {
			if _, err := t.run("", f.tables, "-D", "INPUT", "-j", IPTablesChain); err != nil {
				break // no (more) jumps
			}
		}
		if _, err := t.run("", f.tables, "-F", IPTablesChain); err == nil {
			if _, err := t.run("", f.tables, "-X", IPTablesChain); err != nil {
				errs = append(errs, err)
			}
		}
		if out, err := t.run("", "ipset", "destroy", f.set); err != nil && !strings.Contains(out, "does not exist") {
			errs = append(errs, err)
		}
		if names, err := t.run("", "ipset", "list", "-n"); err == nil {
			for _, n := range strings.Fields(names) {
				if strings.HasPrefix(n, f.set+"-") { // its lifetime sets
					if _, err := t.run("", "ipset", "destroy", n); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		errs = append(errs, t.cleanupGateway(f.tables)...)
	}
	if len(errs) == 0 {
		errs = append(errs, t.destroyGatewaySets())
	}
	return errors.Join(errs...)
}

// Close implements Backend.
func (t *IPTables) Close() error { return nil }

// saved returns the filter table's chain POSTERN rules and whether INPUT
// jumps to it, from iptables-save.
func (t *IPTables) saved(save string) (rules []string, chain, jump bool, err error) {
	text, err := t.run("", save, "-t", "filter")
	if err != nil {
		return nil, false, false, fmt.Errorf("iptables: %w", err)
	}
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, ":"+IPTablesChain+" "):
			chain = true
		case line == "-A INPUT -j "+IPTablesChain:
			jump = true
		case strings.HasPrefix(line, "-A "+IPTablesChain+" "):
			rules = append(rules, line)
		}
	}
	return rules, chain, jump, nil
}

// Audit implements Backend for both families: the sets exist, INPUT jumps
// to the chain, and the chain holds as many rules as Setup installs, each
// with the verdict Setup gave it.
func (t *IPTables) Audit(r Rules) (Damage, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var d Damage
	names, err := t.run("", "ipset", "list", "-n")
	if err != nil {
		return d, fmt.Errorf("iptables: %w", err)
	}
	sets := strings.Fields(names)
	for _, f := range families {
		if r.UsesGateway() {
			t.auditGateway(&d, f, sets)
		}
		if !slices.Contains(sets, f.set) {
			d.add("ipset "+f.set, true)
		}
		for name := range lifetimeSets(r, f.set) {
			if !slices.Contains(sets, name) {
				d.add("ipset "+name, true)
			}
		}
		rules, chain, jump, err := t.saved(f.tables + "-save")
		if err != nil {
			return d, err
		}
		if !chain {
			d.add(f.tables+" chain "+IPTablesChain, false)
			continue
		}
		if !jump {
			d.add(f.tables+" jump from INPUT", false)
		}
		want := chainRules(r, f.set)
		same := len(rules) == len(want)
		for i := 0; same && i < len(rules); i++ {
			same = lastField(rules[i]) == lastField(want[i])
		}
		if !same {
			d.add(f.tables+" chain "+IPTablesChain+" rules", false)
		}
	}
	return d, nil
}

func lastField(rule string) string {
	f := strings.Fields(rule)
	return f[len(f)-1]
}

// Installed implements Backend from the IPv4 chain's protected-port rules.
func (t *IPTables) Installed() ([]port.Spec, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rules, chain, _, err := t.saved("iptables-save")
	if err != nil || !chain {
		return nil, false, err
	}
	var out []port.Spec
	for _, line := range rules {
		if !strings.Contains(line, protectedComment) {
			continue
		}
		f := strings.Fields(line)
		p, num := slices.Index(f, "-p"), slices.Index(f, "--dport")
		if p < 0 || num < 0 || p+1 >= len(f) || num+1 >= len(f) {
			continue
		}
		if spec, err := port.Parse(f[p+1] + "/" + f[num+1]); err == nil {
			out = append(out, spec)
		}
	}
	return out, true, nil
}

// HostPolicyWarnings names the INPUT chains whose policy drops: postern's
// chain only returns, so granted traffic still needs an accept there.
func (t *IPTables) HostPolicyWarnings() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, f := range families {
		if text, err := t.run("", f.tables, "-S", "INPUT"); err == nil && strings.HasPrefix(text, "-P INPUT DROP") {
			out = append(out, f.tables+" INPUT has policy DROP")
		}
	}
	return out
}
