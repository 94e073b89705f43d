package firewall

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"postern/port"
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
//	-A POSTERN -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
//	-A POSTERN -m set --match-set postern4 src,dst -j ACCEPT
//	-A POSTERN -p tcp --dport 22 -j DROP           # each protected port
//	-A POSTERN -p udp --dport 62201 -j DROP        # each knock port and range
//
// It runs the iptables-restore, iptables and ipset programs through the
// function it is given (constructor injection: tests run them inside a
// namespace). The chain is replaced atomically by iptables-restore
// --noflush; other chains are never touched.
type IPTables struct {
	command func(name string, args ...string) *exec.Cmd

	mu     sync.Mutex
	expiry expiries
	now    func() time.Time
}

// NewIPTables returns the backend; a nil command runs programs directly.
func NewIPTables(command func(name string, args ...string) *exec.Cmd) *IPTables {
	if command == nil {
		command = exec.Command
	}
	return &IPTables{command: command, expiry: expiries{}, now: time.Now}
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

// Setup implements Backend: the sets are created if missing (keeping live
// grants), the chain is declared and refilled in one iptables-restore
// transaction per family, and the jump from INPUT is added once.
func (t *IPTables) Setup(r Rules) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range families {
		if _, err := t.run("", "ipset", "create", f.set, "hash:ip,port", "family", f.family, "timeout", "0", "-exist"); err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		var b strings.Builder
		// Declaring the chain with --noflush empties it first, inside
		// the same transaction that refills it.
		fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", IPTablesChain)
		fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n", IPTablesChain)
		fmt.Fprintf(&b, "-A %s -m set --match-set %s src,dst -j ACCEPT\n", IPTablesChain, f.set)
		for _, p := range append(append([]port.Spec(nil), r.Protected...), r.Knock...) {
			fmt.Fprintf(&b, "-A %s -p %s --dport %d -j DROP\n", IPTablesChain, p.Proto, p.Num)
		}
		for _, pr := range r.KnockRanges {
			fmt.Fprintf(&b, "-A %s -p %s --dport %d:%d -j DROP\n", IPTablesChain, pr.Proto, pr.Lo, pr.Hi)
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
	}
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

// Grant implements Backend. ipset's -exist replaces the timeout of an
// element that is there; extend-never-shorten is kept here.
func (t *IPTables) Grant(gs []Grant) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, g := range gs {
		if g.Timeout < time.Second {
			return fmt.Errorf("iptables: grant %v: ipset timeouts are whole seconds", g)
		}
		until, later := t.expiry.extends(g, now)
		if !later {
			continue
		}
		secs := strconv.Itoa(int(math.Ceil(g.Timeout.Seconds())))
		if _, err := t.run("", "ipset", "add", setFor(g.Addr), element(g), "timeout", secs, "-exist"); err != nil {
			return fmt.Errorf("iptables: granting: %w", err)
		}
		t.expiry[grantKey(g)] = until
	}
	t.expiry.forgetExpired(now)
	return nil
}

// Revoke implements Backend.
func (t *IPTables) Revoke(gs []Grant) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, g := range gs {
		if _, err := t.run("", "ipset", "del", setFor(g.Addr), element(g), "-exist"); err != nil {
			return fmt.Errorf("iptables: revoking: %w", err)
		}
		delete(t.expiry, grantKey(g))
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
	}
	return out, nil
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
		if f[i] == "timeout" {
			s, _ := strconv.Atoi(f[i+1])
			g.Timeout = time.Duration(s) * time.Second
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
	}
	clear(t.expiry)
	return errors.Join(errs...)
}

// Close implements Backend.
func (t *IPTables) Close() error { return nil }
