package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/postern/postern/port"
)

// Grants with a lifetime (policy.Lifetime), in sets of their own beside
// grants4/grants6, installed only when Rules asks for them ("4" shown):
//
//	set once4  { type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; }
//	set once4-2 … once4-N { same }               # a grant that lets in N connections has an element in each
//	set cap4   { same; flags timeout; }          # idle grants' absolute end
//	set idle4-120 { same; flags dynamic,timeout; }  # one per idle duration in use
//	chain input {
//	  ip saddr . meta l4proto . th dport @idle4-120 update @idle4-120 { ip saddr . meta l4proto . th dport timeout 120s }
//	  ct state established,related accept
//	  … @grants4 accept
//	  ct state new ip saddr . meta l4proto . th dport @once4 delete @once4 { ip saddr . meta l4proto . th dport } accept
//	  ct state new … @once4-2 delete @once4-2 { … } accept             # and so on to once4-N
//	  ip saddr . meta l4proto . th dport @idle4-120 ip saddr . meta l4proto . th dport @cap4 accept
//	  … drops
//	}
//
// A counted grant is consumed in the kernel one connection at a time:
// each new connection it lets in deletes the element of the first slot
// that still holds it, in the rule that accepts (grant = "once" has one
// slot); the connections go on through conntrack. An idle grant's element is
// refreshed by every packet of its connections and times out idle after
// the last; its cap element ends it regardless.

// lifetimeIDs start far from the input and gateway sets' transaction IDs.
const lifetimeIDs = 100

// lifetimeSets returns the sets r's lifetimes need, per family.
func (n *NFTables) lifetimeSets(r Rules) (once [][2]*nftables.Set, caps [2]*nftables.Set, idle map[time.Duration][2]*nftables.Set) {
	idle = map[time.Duration][2]*nftables.Set{}
	id := uint32(lifetimeIDs)
	mk := func(name string, key nftables.SetDatatype, dynamic bool) *nftables.Set {
		id++
		return &nftables.Set{Table: n.table, Name: name, ID: id, Concatenation: true, KeyType: key, HasTimeout: true, Dynamic: dynamic}
	}
	keys := [2]nftables.SetDatatype{n.sets.grants4.KeyType, n.sets.grants6.KeyType}
	for slot := range r.Connections {
		var pair [2]*nftables.Set
		for i, fam := range []string{"4", "6"} {
			name := "once" + fam
			if slot > 0 {
				name = fmt.Sprintf("once%s-%d", fam, slot+1)
			}
			pair[i] = mk(name, keys[i], true)
		}
		once = append(once, pair)
	}
	for i, fam := range []string{"4", "6"} {
		if len(r.Idle) > 0 {
			caps[i] = mk("cap"+fam, keys[i], false)
		}
	}
	for _, d := range r.Idle {
		var pair [2]*nftables.Set
		for i, fam := range []string{"4", "6"} {
			pair[i] = mk(fmt.Sprintf("idle%s-%d", fam, int(d/time.Second)), keys[i], true)
		}
		idle[d] = pair
	}
	return once, caps, idle
}

// lifetimeSetList is every set of lifetimeSets, in a fixed order.
func (n *NFTables) lifetimeSetList(r Rules) []*nftables.Set {
	once, caps, idle := n.lifetimeSets(r)
	var out []*nftables.Set
	for _, pair := range once {
		out = append(out, pair[0], pair[1])
	}
	for i := range 2 {
		if caps[i] != nil {
			out = append(out, caps[i])
		}
	}
	for _, d := range r.Idle {
		out = append(out, idle[d][0], idle[d][1])
	}
	return out
}

// grantKey loads "ip saddr . meta l4proto . th dport" (family i) into reg1.
func grantKey(i int) []expr.Any {
	l4 := func(reg uint32) expr.Any { return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg} }
	dport := func(reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	}
	if i == 0 {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			l4(reg32 + 1), dport(reg32 + 2),
		}
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		l4(reg32 + 4), dport(reg32 + 5),
	}
}

// ctState is "ct state BITS" (any of them).
func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}},
	}
}

// refreshRules come before "ct state established,related accept": every
// packet of an idle grant's established connections pushes its end back.
// New connection attempts do not (a probe, or SYNs spoofed from the
// client's address, must not keep a grant alive).
func (n *NFTables) refreshRules(r Rules) [][]expr.Any {
	_, _, idle := n.lifetimeSets(r)
	var rules [][]expr.Any
	for _, d := range r.Idle {
		for i, s := range idle[d] {
			rules = append(rules, cat(ctState(expr.CtStateBitESTABLISHED), grantKey(i), []expr.Any{
				&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID},
				&expr.Dynset{SrcRegKey: reg1, SetName: s.Name, SetID: s.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: d},
			}))
		}
	}
	return rules
}

// lifetimeRules come after the plain grants' accepts.
func (n *NFTables) lifetimeRules(r Rules) [][]expr.Any {
	once, caps, idle := n.lifetimeSets(r)
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	ctNew := ctState(expr.CtStateBitNEW)
	var rules [][]expr.Any
	for _, pair := range once {
		for i, s := range pair {
			rules = append(rules, cat(ctNew, grantKey(i), []expr.Any{
				&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID},
				&expr.Dynset{SrcRegKey: reg1, SetName: s.Name, SetID: s.ID, Operation: nftDynsetOpDelete},
				accept,
			}))
		}
	}
	for _, d := range r.Idle {
		for i, s := range idle[d] {
			rules = append(rules, cat(grantKey(i), []expr.Any{
				&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID},
				&expr.Lookup{SourceRegister: reg1, SetName: caps[i].Name, SetID: caps[i].ID},
				accept,
			}))
		}
	}
	return rules
}

// nftDynsetOpDelete is NFT_DYNSET_OP_DELETE (not in x/sys/unix yet).
const nftDynsetOpDelete = 2

// lifetimeElems returns the elements of a grant with a lifetime: its
// element in the once set, or in its idle set (timing out idle) and the
// cap set (its absolute end).
func (n *NFTables) lifetimeElems(g Grant) ([]grantElem, error) {
	set, key := n.grantSetAndKey(g)
	i := 0
	if set == n.sets.grants6 {
		i = 1
	}
	once, caps, idle := n.lifetimeSets(n.rules0)
	switch {
	case g.Connections > 0:
		if g.Connections > len(once) {
			return nil, badRequest{fmt.Errorf("nftables: grant %v: %d connections, the rules set up count %d", g, g.Connections, len(once))}
		}
		var out []grantElem
		for _, pair := range once[:g.Connections] {
			out = append(out, grantElem{setElem{pair[i], key, nil}, g.Timeout, g.Name})
		}
		return out, nil
	case g.Idle > 0:
		pair, ok := idle[g.Idle]
		if !ok {
			return nil, badRequest{fmt.Errorf("nftables: grant %v: idle %v is not in the rules set up", g, g.Idle)}
		}
		return []grantElem{{setElem{pair[i], key, nil}, min(g.Idle, g.Timeout), g.Name},
			{setElem{caps[i], key, nil}, g.Timeout, g.Name}}, nil
	}
	return nil, nil
}

// listLifetimes reads the grants with a lifetime back from the kernel.
func (n *NFTables) listLifetimes(have map[string]bool) ([]Grant, error) {
	once, caps, idle := n.lifetimeSets(n.rules0)
	get := func(s *nftables.Set) ([]nftables.SetElement, error) { return n.elementsOf(have, s) }
	var out []Grant
	for i, alen := range []int{4, 16} {
		grantOf := func(e nftables.SetElement) (Grant, bool) {
			if len(e.Key) < alen+8 {
				return Grant{}, false
			}
			a, _ := netip.AddrFromSlice(e.Key[:alen])
			return Grant{Addr: a, Timeout: e.Expires, Name: e.Comment,
				Port: port.Spec{Proto: port.Protocol(e.Key[alen]), Num: binary.BigEndian.Uint16(e.Key[alen+4:])}}, true
		}
		// A counted grant: one per key, with the slots it still holds.
		counted := map[string]Grant{}
		var order []string
		for _, pair := range once {
			elems, err := get(pair[i])
			if err != nil {
				return nil, err
			}
			for _, e := range elems {
				g, ok := grantOf(e)
				if !ok {
					continue
				}
				if c, seen := counted[string(e.Key)]; seen {
					g.Timeout = max(g.Timeout, c.Timeout)
					g.Connections = c.Connections
				} else {
					order = append(order, string(e.Key))
				}
				g.Connections++
				counted[string(e.Key)] = g
			}
		}
		for _, k := range order {
			out = append(out, counted[k])
		}
		capped, err := get(caps[i])
		if err != nil {
			return nil, err
		}
		capLeft := map[string]time.Duration{}
		for _, e := range capped {
			capLeft[string(e.Key)] = e.Expires
		}
		for _, d := range n.rules0.Idle {
			elems, err := get(idle[d][i])
			if err != nil {
				return nil, err
			}
			for _, e := range elems {
				left, ok := capLeft[string(e.Key)]
				if !ok {
					continue // its cap is over: nothing new gets in
				}
				if g, ok := grantOf(e); ok {
					g.Idle, g.Timeout = d, left
					out = append(out, g)
				}
			}
		}
	}
	return out, nil
}

// elementsOf lists set s, or nothing when it is not installed (not in
// have, or gone meanwhile).
func (n *NFTables) elementsOf(have map[string]bool, s *nftables.Set) ([]nftables.SetElement, error) {
	if s == nil || !have[s.Name] {
		return nil, nil
	}
	elems, err := n.conn.GetSetElements(s)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nftables: listing %s: %w", s.Name, err)
	}
	return elems, nil
}

// removeUnusedLifetimeSets deletes the lifetime sets an earlier Setup made
// that r no longer uses (a slot above the new count, an idle duration gone),
// with their elements: no rule reads them now, but a later Setup that used
// them again would bring back grants revoked or pruned in between.
func (n *NFTables) removeUnusedLifetimeSets(r Rules) error {
	sets, err := n.conn.GetSets(n.table)
	if err != nil {
		return fmt.Errorf("nftables: listing sets: %w", err)
	}
	keep := map[string]bool{}
	for _, s := range n.lifetimeSetList(r) {
		keep[s.Name] = true
	}
	found := false
	for _, s := range sets {
		if isLifetimeSet(s.Name) && !keep[s.Name] {
			n.conn.DelSet(s)
			found = true
		}
	}
	if !found {
		return nil
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: removing unused lifetime sets: %w", err)
	}
	return nil
}

func isLifetimeSet(name string) bool {
	for _, prefix := range []string{"once4", "once6", "cap4", "cap6", "idle4-", "idle6-"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}
