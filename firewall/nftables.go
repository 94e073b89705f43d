package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/postern/postern/port"
)

// TableName is the nftables table postern owns, in the inet family. It is
// not an "owner" table on purpose: if the daemon dies the table stays, the
// protected ports stay closed and live grants still expire.
const TableName = "postern"

// NFTables is the nftables backend. It talks netlink through the connection
// it is given (constructor injection: tests pass a namespace's connection).
//
//	table inet postern {
//	  set grants4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
//	  set grants6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
//	  set protected { type inet_proto . inet_service; }
//	  set knock { type inet_proto . inet_service; }
//	  chain input {
//	    type filter hook input priority filter - 10; policy accept;
//	    ct state established,related accept
//	    ip  saddr . meta l4proto . th dport @grants4 accept
//	    ip6 saddr . meta l4proto . th dport @grants6 accept
//	    meta l4proto . th dport @protected drop
//	    meta l4proto . th dport @knock drop
//	    meta l4proto tcp th dport 20000-39999 drop   # one per knock range
//	  }
//	}
type NFTables struct {
	conn  *nftables.Conn
	table *nftables.Table
	sets  struct{ grants4, grants6, protected, knock *nftables.Set }
	chain *nftables.Chain

	gw                            gatewaySets
	forward, dnatChain, snatChain *nftables.Chain

	// reopen makes a new connection when an operation fails on the
	// lasting one (a socket overrun leaves it unusable); nil: none.
	reopen func() (*nftables.Conn, error)

	// rules0 is what the last Setup installed: the lifetime sets grants
	// go to depend on it.
	rules0 Rules

	mu sync.Mutex
}

// NewNFTables returns a backend that uses conn.
func NewNFTables(conn *nftables.Conn) *NFTables {
	n := &NFTables{conn: conn}
	n.table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	svc := nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	n.sets.grants4 = &nftables.Set{Table: n.table, Name: "grants4", HasTimeout: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
	n.sets.grants6 = &nftables.Set{Table: n.table, Name: "grants6", HasTimeout: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)}
	n.sets.protected = &nftables.Set{Table: n.table, Name: "protected", Concatenation: true, KeyType: svc}
	n.sets.knock = &nftables.Set{Table: n.table, Name: "knock", Concatenation: true, KeyType: svc}
	// Fixed transaction-local IDs (rules refer to sets by them within a
	// batch), so the messages Setup sends are the same in every process.
	for i, set := range []*nftables.Set{n.sets.grants4, n.sets.grants6, n.sets.protected, n.sets.knock} {
		set.ID = uint32(i + 1)
	}
	prio := *nftables.ChainPriorityFilter - 10
	policy := nftables.ChainPolicyAccept
	n.chain = &nftables.Chain{Table: n.table, Name: "input", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: &prio, Policy: &policy}
	n.newGatewaySets(5)
	return n
}

// OpenNFTables connects to the current network namespace's nftables. The
// connection lasts: opening and closing a netlink socket per change costs
// milliseconds of kernel time each.
func OpenNFTables() (*NFTables, error) {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	n := NewNFTables(c)
	n.SetReopen(func() (*nftables.Conn, error) { return nftables.New(nftables.AsLasting()) })
	return n, nil
}

// badRequest is an error in what was asked, not in the connection.
type badRequest struct{ error }

func (e badRequest) Unwrap() error { return e.error }

// SetReopen gives the backend a way to replace its connection: an
// operation that fails is tried once more on a new one.
func (n *NFTables) SetReopen(reopen func() (*nftables.Conn, error)) { n.reopen = reopen }

// again runs op; if it fails and a new connection can be had, the old one
// is closed and op runs once more on the new one. Every operation is
// idempotent (grants add, delete and add again; Setup replaces), so a
// transaction the failure left half-sent is simply sent whole.
func (n *NFTables) again(op func() error) error {
	err := op()
	if err == nil || n.reopen == nil || errors.As(err, new(badRequest)) {
		return err
	}
	c, rerr := n.reopen()
	if rerr != nil {
		return err
	}
	n.mu.Lock()
	old := n.conn
	n.conn = c
	n.mu.Unlock()
	old.CloseLasting()
	return op()
}

// Setup implements Backend: the table, sets and chains are added if
// missing (existing grant sets keep their elements), the chains' rules and
// the port sets are replaced. The input part is one netlink transaction of
// its own, first: a kernel that cannot do the gateway part (no NAT, fib or
// conntrack expressions) still gets the host's ports closed. Without a
// gateway in use, a gateway part left by an earlier configuration goes.
func (n *NFTables) Setup(r Rules) error { return n.again(func() error { return n.setup(r) }) }

func (n *NFTables) setup(r Rules) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.rules0 = r
	c := n.conn
	for i, p := range n.parts(r) {
		c.AddTable(n.table)
		for _, s := range p.sets {
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("nftables: %w", err)
			}
		}
		for _, sk := range p.fill {
			c.FlushSet(sk.set)
			if len(sk.keys) == 0 {
				continue
			}
			elems := make([]nftables.SetElement, len(sk.keys))
			for i, k := range sk.keys {
				elems[i] = nftables.SetElement{Key: k}
			}
			if err := c.SetAddElements(sk.set, elems); err != nil {
				return fmt.Errorf("nftables: %w", err)
			}
		}
		for _, cr := range p.chains {
			c.AddChain(cr.chain)
			c.FlushChain(cr.chain)
			for _, exprs := range cr.rules {
				c.AddRule(&nftables.Rule{Table: n.table, Chain: cr.chain, Exprs: exprs})
			}
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: setting up table inet %s (%s part): %w", TableName, []string{"input", "gateway"}[i], err)
		}
	}
	if err := n.removeUnusedLifetimeSets(r); err != nil {
		return err
	}
	if !r.UsesGateway() {
		return n.removeGateway()
	}
	return nil
}

// part is what one Setup transaction installs, and what Audit checks.
type part struct {
	sets      []*nftables.Set // added if missing
	grantSets []*nftables.Set // of those, the ones whose elements are grants
	fill      []setKeys       // sets whose contents are replaced
	chains    []nftChain      // added if missing, their rules replaced
}

type setKeys struct {
	set  *nftables.Set
	keys [][]byte
}

// parts returns the input part and, when r uses a gateway, the gateway part.
func (n *NFTables) parts(r Rules) []part {
	lifetimes := n.lifetimeSetList(r)
	in := part{
		sets:      append([]*nftables.Set{n.sets.grants4, n.sets.grants6, n.sets.protected, n.sets.knock}, lifetimes...),
		grantSets: append([]*nftables.Set{n.sets.grants4, n.sets.grants6}, lifetimes...),
		fill:      []setKeys{{set: n.sets.protected}, {set: n.sets.knock}},
		chains:    []nftChain{{n.chain, n.rules(r)}},
	}
	for _, p := range r.Protected {
		in.fill[0].keys = append(in.fill[0].keys, serviceKey(p))
	}
	for _, p := range r.Knock {
		in.fill[1].keys = append(in.fill[1].keys, serviceKey(p))
	}
	if !r.UsesGateway() {
		return []part{in}
	}
	gw := part{sets: n.gatewaySetList(), grantSets: n.grantSets(),
		fill: []setKeys{{set: n.gw.closed[0]}, {set: n.gw.closed[1]}}, chains: n.gatewayChains(r)}
	for _, d := range r.Forwarded {
		i := familyIndex(d.Addr)
		gw.fill[i].keys = append(gw.fill[i].keys, destinationKey(d))
	}
	return []part{in, gw}
}

// removeGateway deletes the gateway chains and sets an earlier Setup left.
func (n *NFTables) removeGateway() error {
	chains, err := n.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("nftables: listing chains: %w", err)
	}
	found := false
	for _, ch := range []*nftables.Chain{n.forward, n.dnatChain, n.snatChain} {
		if slices.ContainsFunc(chains, func(c *nftables.Chain) bool { return c.Table.Name == TableName && c.Name == ch.Name }) {
			n.conn.DelChain(ch)
			found = true
		}
	}
	sets, err := n.conn.GetSets(n.table)
	if err != nil {
		return fmt.Errorf("nftables: listing sets: %w", err)
	}
	for _, s := range n.gatewaySetList() {
		if slices.ContainsFunc(sets, func(have *nftables.Set) bool { return have.Name == s.Name }) {
			n.conn.DelSet(s)
			found = true
		}
	}
	if !found {
		return nil
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: removing the gateway part of table inet %s: %w", TableName, err)
	}
	return nil
}

// Registers: concatenations are laid out in 32-bit registers (8 = the first),
// each field padded to 4 bytes, exactly as nft(8) compiles them.
const (
	reg32 = 8
	reg1  = 1 // the 128-bit register that overlaps reg32..reg32+3
)

func (n *NFTables) rules(r Rules) [][]expr.Any {
	dport := func(reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	}
	l4proto := func(reg uint32) expr.Any { return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg} }
	nfproto := func(p byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}},
		}
	}
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	rules := n.refreshRules(r)
	rules = append(rules, [][]expr.Any{
		n.establishedRule(),
		append(nfproto(unix.NFPROTO_IPV4), // ip saddr . meta l4proto . th dport @grants4 accept
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			l4proto(reg32+1), dport(reg32+2),
			&expr.Lookup{SourceRegister: reg1, SetName: n.sets.grants4.Name, SetID: n.sets.grants4.ID},
			accept),
		append(nfproto(unix.NFPROTO_IPV6), // ip6 saddr . meta l4proto . th dport @grants6 accept
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
			l4proto(reg32+4), dport(reg32+5),
			&expr.Lookup{SourceRegister: reg1, SetName: n.sets.grants6.Name, SetID: n.sets.grants6.ID},
			accept),
	}...)
	rules = append(rules, n.lifetimeRules(r)...)
	rules = append(rules, [][]expr.Any{
		{l4proto(reg1), dport(reg32 + 1), // meta l4proto . th dport @protected drop
			&expr.Lookup{SourceRegister: reg1, SetName: n.sets.protected.Name, SetID: n.sets.protected.ID}, drop},
		{l4proto(reg1), dport(reg32 + 1), // meta l4proto . th dport @knock drop
			&expr.Lookup{SourceRegister: reg1, SetName: n.sets.knock.Name, SetID: n.sets.knock.ID}, drop},
	}...)
	for _, pr := range r.KnockRanges { // meta l4proto P th dport LO-HI drop
		lo, hi := make([]byte, 2), make([]byte, 2)
		binary.BigEndian.PutUint16(lo, pr.Lo)
		binary.BigEndian.PutUint16(hi, pr.Hi)
		rules = append(rules, []expr.Any{
			l4proto(reg1), &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(pr.Proto)}},
			dport(reg1), &expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: lo, ToData: hi},
			drop,
		})
	}
	return rules
}

// establishedRule is "ct state established,related accept".
func (n *NFTables) establishedRule() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

func serviceKey(p port.Spec) []byte { return protoPort(p.Proto, p.Num) }

func (n *NFTables) grantSetAndKey(g Grant) (*nftables.Set, []byte) {
	a := g.Addr.Unmap()
	svc := serviceKey(g.Port)
	if a.Is4() {
		a4 := a.As4()
		return n.sets.grants4, append(a4[:], svc...)
	}
	a16 := a.As16()
	return n.sets.grants6, append(a16[:], svc...)
}

// grantsPerBatch bounds one netlink transaction: each grant is three
// messages, each acknowledged. A restore of thousands of grants in one
// batch fails ("message too long" sending, "no buffer space" reading the
// acks; 128 grants already overflow). Grants are independent, so batches
// need not be one transaction.
const grantsPerBatch = 32

// Grant implements Backend. nftables does not refresh the timeout of an
// element that exists, so each grant is added, deleted and added again with
// its new timeout in one transaction: that works whether or not the element
// was there, and the port is never closed in between.
func (n *NFTables) Grant(gs []Grant) error { return n.again(func() error { return n.grant(gs) }) }

func (n *NFTables) grant(gs []Grant) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, g := range gs {
		if g.Timeout < time.Millisecond {
			return badRequest{fmt.Errorf("nftables: grant %v: timeout too short", g)}
		}
	}
	elems, err := n.elemsOf(gs)
	if err != nil {
		return err
	}
	for batch := range slices.Chunk(elems, grantsPerBatch) {
		for _, ge := range batch {
			e := []nftables.SetElement{{Key: ge.key, Val: ge.val, Timeout: ge.timeout, Comment: ge.name}}
			if err := n.conn.SetAddElements(ge.set, e); err != nil {
				return err
			}
			if err := n.conn.SetDeleteElements(ge.set, []nftables.SetElement{{Key: ge.key}}); err != nil {
				return err
			}
			if err := n.conn.SetAddElements(ge.set, e); err != nil {
				return err
			}
		}
		if err := n.conn.Flush(); err != nil {
			return fmt.Errorf("nftables: granting: %w", err)
		}
	}
	return nil
}

// grantElem is one set element of a grant.
type grantElem struct {
	setElem
	timeout time.Duration
	name    string
}

// elemsOf returns the set elements of grants: one for an input grant, one
// to three for a gateway grant (forward, translations).
func (n *NFTables) elemsOf(gs []Grant) ([]grantElem, error) {
	out := make([]grantElem, 0, len(gs))
	for _, g := range gs {
		if (g.Connections > 0 || g.Idle > 0) && !g.To.IsValid() && !g.All {
			es, err := n.lifetimeElems(g)
			if err != nil {
				return nil, err
			}
			out = append(out, es...)
			continue
		}
		if !g.To.IsValid() && !g.All {
			set, k := n.grantSetAndKey(g)
			out = append(out, grantElem{setElem{set, k, nil}, g.Timeout, g.Name})
			continue
		}
		for _, e := range n.gatewayElems(g) {
			out = append(out, grantElem{e, g.Timeout, g.Name})
		}
	}
	return out, nil
}

// Revoke implements Backend, with the same add-then-delete idiom so that a
// grant that already expired is no error.
func (n *NFTables) Revoke(gs []Grant) error { return n.again(func() error { return n.revoke(gs) }) }

func (n *NFTables) revoke(gs []Grant) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	elems, err := n.elemsOf(gs)
	if err != nil {
		return err
	}
	for batch := range slices.Chunk(elems, grantsPerBatch) {
		for _, ge := range batch {
			if err := n.conn.SetAddElements(ge.set, []nftables.SetElement{{Key: ge.key, Val: ge.val, Timeout: time.Second}}); err != nil {
				return err
			}
			if err := n.conn.SetDeleteElements(ge.set, []nftables.SetElement{{Key: ge.key}}); err != nil {
				return err
			}
		}
		if err := n.conn.Flush(); err != nil {
			return fmt.Errorf("nftables: revoking: %w", err)
		}
	}
	return nil
}

// List implements Backend by reading the grant sets from the kernel.
func (n *NFTables) List() (gs []Grant, err error) {
	err = n.again(func() error { gs, err = n.list(); return err })
	return gs, err
}

func (n *NFTables) list() ([]Grant, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ok, err := n.tableExists(); err != nil || !ok {
		return nil, err
	}
	var out []Grant
	for _, s := range []*nftables.Set{n.sets.grants4, n.sets.grants6} {
		elems, err := n.conn.GetSetElements(s)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("nftables: listing %s: %w", s.Name, err)
		}
		for _, e := range elems {
			alen := 4
			if s == n.sets.grants6 {
				alen = 16
			}
			if len(e.Key) < alen+8 {
				continue
			}
			a, _ := netip.AddrFromSlice(e.Key[:alen])
			out = append(out, Grant{Addr: a, Timeout: e.Expires, Name: e.Comment,
				Port: port.Spec{Proto: port.Protocol(e.Key[alen]), Num: binary.BigEndian.Uint16(e.Key[alen+4:])}})
		}
	}
	sets, err := n.conn.GetSets(n.table)
	if err != nil {
		return nil, fmt.Errorf("nftables: listing sets: %w", err)
	}
	have := map[string]bool{}
	for _, s := range sets {
		have[s.Name] = true
	}
	gw, err := n.listGateway(have)
	if err != nil {
		return nil, err
	}
	lt, err := n.listLifetimes(have)
	return append(append(out, gw...), lt...), err
}

// Cleanup implements Backend by deleting the whole table.
func (n *NFTables) Cleanup() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ok, err := n.tableExists(); err != nil || !ok {
		return err // nil: nothing installed
	}
	n.conn.DelTable(n.table)
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: deleting table inet %s: %w", TableName, err)
	}
	return nil
}

// Close releases the netlink connection.
func (n *NFTables) Close() error { return n.conn.CloseLasting() }

// Audit implements Backend: the table, its four sets, the port sets'
// contents and the chain's rules (their number and verdicts, in order) are
// compared with what Setup installs for r.
func (n *NFTables) Audit(r Rules) (d Damage, err error) {
	err = n.again(func() error { d, err = n.audit(r); return err })
	return d, err
}

func (n *NFTables) audit(r Rules) (Damage, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var d Damage
	if ok, err := n.tableExists(); err != nil {
		return d, err
	} else if !ok {
		d.add("table inet "+TableName, true)
		return d, nil
	}
	sets, err := n.conn.GetSets(n.table)
	if err != nil {
		return d, fmt.Errorf("nftables: listing sets: %w", err)
	}
	have := map[string]bool{}
	for _, s := range sets {
		have[s.Name] = true
	}
	chains, err := n.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return d, fmt.Errorf("nftables: listing chains: %w", err)
	}
	for _, p := range n.parts(r) {
		for _, s := range p.grantSets {
			if !have[s.Name] {
				d.add("set "+s.Name, true)
			}
		}
		for _, sk := range p.fill {
			if err := n.auditElements(&d, have, sk); err != nil {
				return d, err
			}
		}
		for _, cr := range p.chains {
			if err := n.auditChain(&d, chains, cr); err != nil {
				return d, err
			}
		}
	}
	return d, nil
}

// auditElements compares a filled set's elements with what Setup puts in.
func (n *NFTables) auditElements(d *Damage, have map[string]bool, sk setKeys) error {
	if !have[sk.set.Name] {
		d.add("set "+sk.set.Name, false)
		return nil
	}
	elems, err := n.conn.GetSetElements(sk.set)
	if err != nil {
		return fmt.Errorf("nftables: listing %s: %w", sk.set.Name, err)
	}
	got := make(map[string]bool, len(elems))
	for _, e := range elems {
		got[string(e.Key)] = true
	}
	want := make(map[string]bool, len(sk.keys))
	for _, k := range sk.keys {
		want[string(k)] = true
	}
	if !maps.Equal(got, want) {
		d.add("set "+sk.set.Name+" elements", false)
	}
	return nil
}

// auditChain checks a chain's hook, policy and its rules' number and
// verdicts, in order.
func (n *NFTables) auditChain(d *Damage, chains []*nftables.Chain, cr nftChain) error {
	name := cr.chain.Name
	i := slices.IndexFunc(chains, func(c *nftables.Chain) bool { return c.Table.Name == TableName && c.Name == name })
	if i < 0 {
		d.add("chain "+name, false)
		return nil
	}
	if c := chains[i]; c.Hooknum == nil || *c.Hooknum != *cr.chain.Hooknum || c.Policy == nil || *c.Policy != *cr.chain.Policy {
		d.add("chain "+name+" hook or policy", false)
	}
	rules, err := n.conn.GetRules(n.table, cr.chain)
	if err != nil {
		return fmt.Errorf("nftables: listing rules: %w", err)
	}
	same := len(rules) == len(cr.rules)
	for j := 0; same && j < len(rules); j++ {
		same = verdictOf(rules[j].Exprs) == verdictOf(cr.rules[j])
	}
	if !same {
		d.add("chain "+name+" rules", false)
	}
	return nil
}

func verdictOf(exprs []expr.Any) expr.VerdictKind {
	if len(exprs) == 0 {
		return -100
	}
	if v, ok := exprs[len(exprs)-1].(*expr.Verdict); ok {
		return v.Kind
	}
	return -100
}

func (n *NFTables) tableExists() (bool, error) {
	tables, err := n.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: listing tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }), nil
}

// Installed implements Backend from the protected set.
func (n *NFTables) Installed() ([]port.Spec, bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ok, err := n.tableExists(); err != nil || !ok {
		return nil, false, err
	}
	elems, err := n.conn.GetSetElements(n.sets.protected)
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrNotExist) {
		return nil, true, fmt.Errorf("nftables: listing protected: %w", err)
	}
	var out []port.Spec
	for _, e := range elems {
		if len(e.Key) >= 8 {
			out = append(out, port.Spec{Proto: port.Protocol(e.Key[0]), Num: binary.BigEndian.Uint16(e.Key[4:])})
		}
	}
	slices.SortFunc(out, func(a, b port.Spec) int { return int(a.Num) - int(b.Num) })
	return out, true, nil
}

// HostPolicyWarnings names the administrator's input chains that drop by
// default: postern's accept ends only its own chain, so granted traffic
// still needs an accept there.
func (n *NFTables) HostPolicyWarnings() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	chains, err := n.conn.ListChains()
	if err != nil {
		return nil
	}
	var out []string
	for _, c := range chains {
		if c.Table.Name == TableName || c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookInput ||
			c.Policy == nil || *c.Policy != nftables.ChainPolicyDrop {
			continue
		}
		out = append(out, fmt.Sprintf("chain %s %s %s has policy drop", familyName(c.Table.Family), c.Table.Name, c.Name))
	}
	return out
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return fmt.Sprint(f)
}
