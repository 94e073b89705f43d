package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/postern/postern/port"
)

// The gateway part of table inet postern: the forward path and its address
// translations, in sets and maps whose elements expire in the kernel like
// the input grants (one of each per address family; "4" shown):
//
//	set fwd4    { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags timeout; }  # client . to . port
//	set fwdvia4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }  # client . external port: DNATed grants
//	set masq4   { same type; flags timeout; }
//	map snat4   { same type : ipv4_addr; flags timeout; }
//	map dnat4   { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags timeout; }  # client . external port : to . port
//	set closed4 { type ipv4_addr . inet_proto . inet_service; }  # protected destinations
//	set fwdall4, masqall4 { type ipv4_addr; flags timeout; }  # forward-all clients (FORWARD_ALL)
//	map snatall4, dnatall4 { type ipv4_addr : ipv4_addr; flags timeout; }
//	chain forward {
//	  type filter hook forward priority filter - 10; policy accept;
//	  ct state established,related accept
//	  ip saddr . ip daddr . meta l4proto . th dport @fwd4 accept
//	  ct status dnat ip saddr . meta l4proto . ct original proto-dst @fwdvia4 accept
//	  ip saddr @fwdall4 accept
//	  # with Rules.Published (Docker hosts):
//	  ct status dnat ip saddr . meta l4proto . ct original proto-dst @grants4 accept
//	  ct status dnat meta l4proto . ct original proto-dst @protected drop
//	  ip daddr . meta l4proto . th dport @closed4 drop
//	}
//	chain dnat {
//	  type nat hook prerouting priority dstnat - 10; policy accept;
//	  fib daddr type local dnat ip to ip saddr . meta l4proto . th dport map @dnat4
//	  fib daddr type local dnat ip to ip saddr map @dnatall4
//	}
//	chain snat {
//	  type nat hook postrouting priority srcnat - 10; policy accept;
//	  ip saddr . ip daddr . meta l4proto . th dport @masq4 masquerade
//	  snat ip to ip saddr . ip daddr . meta l4proto . th dport map @snat4
//	  ip saddr @masqall4 masquerade
//	  snat ip to ip saddr map @snatall4
//	}
//
// Like the input chain, an accept here ends only postern's chain: the
// administrator's (and Docker's) forward rules still see granted traffic;
// a drop is final. Translations come before everyone else's (priority
// - 10) and touch only granted clients.
type gatewaySets struct {
	fwd, masq, snat, dnat, closed [2]*nftables.Set // [0] IPv4, [1] IPv6
	// fwdVia opens a grant reached through a port of this host (DNAT):
	// only connections DNATed from that port pass, never the same
	// client going to the inside host directly.
	fwdVia [2]*nftables.Set
	// Forward-all grants (fwknop's FORWARD_ALL), keyed by the client.
	fwdAll, masqAll, snatAll, dnatAll [2]*nftables.Set
}

// ipFamily describes what differs between IPv4 and IPv6 in rules and keys.
type ipFamily struct {
	nfproto      byte
	alen         int
	saddr, daddr uint32 // offsets in the network header
	addrType     nftables.SetDatatype
}

var ipFamilies = [2]ipFamily{
	{unix.NFPROTO_IPV4, 4, 12, 16, nftables.TypeIPAddr},
	{unix.NFPROTO_IPV6, 16, 8, 24, nftables.TypeIP6Addr},
}

func familyIndex(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 0
	}
	return 1
}

func (n *NFTables) newGatewaySets(nextID uint32) {
	for i, f := range ipFamilies {
		sfx := fmt.Sprint([]int{4, 6}[i])
		flow := nftables.MustConcatSetType(f.addrType, f.addrType, nftables.TypeInetProto, nftables.TypeInetService)
		svc := nftables.MustConcatSetType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService)
		n.gw.fwd[i] = &nftables.Set{Name: "fwd" + sfx, Concatenation: true, KeyType: flow, HasTimeout: true}
		n.gw.masq[i] = &nftables.Set{Name: "masq" + sfx, Concatenation: true, KeyType: flow, HasTimeout: true}
		n.gw.snat[i] = &nftables.Set{Name: "snat" + sfx, Concatenation: true, KeyType: flow, HasTimeout: true, IsMap: true, DataType: f.addrType}
		n.gw.dnat[i] = &nftables.Set{Name: "dnat" + sfx, Concatenation: true, KeyType: svc, HasTimeout: true, IsMap: true,
			DataType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService)}
		n.gw.closed[i] = &nftables.Set{Name: "closed" + sfx, Concatenation: true, KeyType: svc}
		n.gw.fwdVia[i] = &nftables.Set{Name: "fwdvia" + sfx, Concatenation: true, KeyType: svc, HasTimeout: true}
		n.gw.fwdAll[i] = &nftables.Set{Name: "fwdall" + sfx, KeyType: f.addrType, HasTimeout: true}
		n.gw.masqAll[i] = &nftables.Set{Name: "masqall" + sfx, KeyType: f.addrType, HasTimeout: true}
		n.gw.snatAll[i] = &nftables.Set{Name: "snatall" + sfx, KeyType: f.addrType, HasTimeout: true, IsMap: true, DataType: f.addrType}
		n.gw.dnatAll[i] = &nftables.Set{Name: "dnatall" + sfx, KeyType: f.addrType, HasTimeout: true, IsMap: true, DataType: f.addrType}
	}
	for _, s := range n.gatewaySetList() {
		s.Table, s.ID = n.table, nextID
		nextID++
	}
	accept := nftables.ChainPolicyAccept
	filter := *nftables.ChainPriorityFilter - 10
	dstnat := *nftables.ChainPriorityNATDest - 10
	srcnat := *nftables.ChainPriorityNATSource - 10
	n.forward = &nftables.Chain{Table: n.table, Name: "forward", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: &filter, Policy: &accept}
	n.dnatChain = &nftables.Chain{Table: n.table, Name: "dnat", Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: &dstnat, Policy: &accept}
	n.snatChain = &nftables.Chain{Table: n.table, Name: "snat", Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: &srcnat, Policy: &accept}
}

func (n *NFTables) gatewaySetList() []*nftables.Set {
	var out []*nftables.Set
	for i := range 2 {
		out = append(out, n.gw.fwd[i], n.gw.masq[i], n.gw.snat[i], n.gw.dnat[i], n.gw.closed[i],
			n.gw.fwdAll[i], n.gw.masqAll[i], n.gw.snatAll[i], n.gw.dnatAll[i], n.gw.fwdVia[i])
	}
	return out
}

// grantSets are the gateway sets whose elements are grants (their loss
// loses grants).
func (n *NFTables) grantSets() []*nftables.Set {
	var out []*nftables.Set
	for i := range 2 {
		out = append(out, n.gw.fwd[i], n.gw.masq[i], n.gw.snat[i], n.gw.dnat[i],
			n.gw.fwdAll[i], n.gw.masqAll[i], n.gw.snatAll[i], n.gw.dnatAll[i], n.gw.fwdVia[i])
	}
	return out
}

// gatewayChains are the chains of the gateway part, with their rules for r.
func (n *NFTables) gatewayChains(r Rules) []nftChain {
	return []nftChain{
		{n.forward, n.forwardRules(r.Published)},
		{n.dnatChain, n.dnatRules()},
		{n.snatChain, n.snatRules()},
	}
}

type nftChain struct {
	chain *nftables.Chain
	rules [][]expr.Any
}

// reg names the register of the 32-bit word at offset w of a concatenation:
// the first is "reg 1" as nft(8) writes it.
func reg(w int) uint32 {
	if w == 0 {
		return reg1
	}
	return reg32 + uint32(w)
}

func isFamily(f ipFamily) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
	}
}

// flowKey loads "saddr . daddr . meta l4proto . th dport" from reg 1 on.
func flowKey(f ipFamily) []expr.Any {
	w := f.alen / 4
	return []expr.Any{
		&expr.Payload{DestRegister: reg(0), Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: uint32(f.alen)},
		&expr.Payload{DestRegister: reg(w), Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: uint32(f.alen)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg(2 * w)},
		&expr.Payload{DestRegister: reg(2*w + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// serviceKeyOf loads "ADDR . meta l4proto . PORT" from reg 1 on, where
// ADDR is the source (or destination) address and PORT the transport
// header's destination port, or with original the destination port of the
// connection before any DNAT.
func serviceKeyOf(f ipFamily, off uint32, original bool) []expr.Any {
	w := f.alen / 4
	var dport expr.Any = &expr.Payload{DestRegister: reg(w + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	if original {
		dport = &expr.Ct{Register: reg(w + 1), Key: expr.CtKeyPROTODST, Direction: 0}
	}
	return []expr.Any{
		&expr.Payload{DestRegister: reg(0), Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(f.alen)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg(w)},
		dport,
	}
}

func lookup(s *nftables.Set) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID}
}

func mapLookup(s *nftables.Set) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID, DestRegister: reg1, IsDestRegSet: true}
}

// ipsDstNAT is the conntrack status bit of a translated destination.
const ipsDstNAT = 1 << 5

// ctStatusDNAT matches connections whose destination was translated.
func ctStatusDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}},
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func (n *NFTables) forwardRules(published bool) [][]expr.Any {
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	drop := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	rules := [][]expr.Any{n.establishedRule()}
	for i, f := range ipFamilies {
		rules = append(rules, cat(isFamily(f), flowKey(f), []expr.Any{lookup(n.gw.fwd[i])}, accept))
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(ctStatusDNAT(), isFamily(f), serviceKeyOf(f, f.saddr, true),
			[]expr.Any{lookup(n.gw.fwdVia[i])}, accept))
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(isFamily(f), saddr(f), []expr.Any{lookup(n.gw.fwdAll[i])}, accept))
	}
	if published {
		for i, f := range ipFamilies {
			grants := n.sets.grants4
			if i == 1 {
				grants = n.sets.grants6
			}
			rules = append(rules, cat(ctStatusDNAT(), isFamily(f), serviceKeyOf(f, f.saddr, true),
				[]expr.Any{lookup(grants)}, accept))
		}
		rules = append(rules, cat(ctStatusDNAT(), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Ct{Register: reg32 + 1, Key: expr.CtKeyPROTODST, Direction: 0},
			lookup(n.sets.protected)}, drop))
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(isFamily(f), serviceKeyOf(f, f.daddr, false), []expr.Any{lookup(n.gw.closed[i])}, drop))
	}
	return rules
}

func (n *NFTables) dnatRules() [][]expr.Any {
	var rules [][]expr.Any
	local := []expr.Any{ // fib daddr type local
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(local, isFamily(f), serviceKeyOf(f, f.saddr, false), []expr.Any{
			mapLookup(n.gw.dnat[i]),
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg1, RegProtoMin: reg(f.alen / 4)},
		}))
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(local, isFamily(f), saddr(f), []expr.Any{
			mapLookup(n.gw.dnatAll[i]),
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg1},
		}))
	}
	return rules
}

// saddr loads the source address into reg 1.
func saddr(f ipFamily) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: uint32(f.alen)}}
}

func (n *NFTables) snatRules() [][]expr.Any {
	var rules [][]expr.Any
	for i, f := range ipFamilies {
		rules = append(rules, cat(isFamily(f), flowKey(f), []expr.Any{lookup(n.gw.masq[i]), &expr.Masq{}}))
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(isFamily(f), flowKey(f), []expr.Any{
			mapLookup(n.gw.snat[i]),
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.nfproto), RegAddrMin: reg1},
		}))
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(isFamily(f), saddr(f), []expr.Any{lookup(n.gw.masqAll[i]), &expr.Masq{}}))
	}
	for i, f := range ipFamilies {
		rules = append(rules, cat(isFamily(f), saddr(f), []expr.Any{
			mapLookup(n.gw.snatAll[i]),
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.nfproto), RegAddrMin: reg1},
		}))
	}
	return rules
}

// Element keys, laid out as the concatenations above: addresses, then the
// protocol and the port each padded to 4 bytes.
func addrBytes(a netip.Addr) []byte { return a.Unmap().AsSlice() }

func protoPort(proto port.Protocol, num uint16) []byte {
	k := make([]byte, 8)
	k[0] = byte(proto)
	binary.BigEndian.PutUint16(k[4:], num)
	return k
}

func flowElemKey(g Grant) []byte {
	return slices.Concat(addrBytes(g.Addr), addrBytes(g.To), serviceKey(g.Port))
}

func destinationKey(d Destination) []byte {
	return slices.Concat(addrBytes(d.Addr), serviceKey(d.Port))
}

// gatewayElems returns the elements g needs in each set, with their map
// values.
func (n *NFTables) gatewayElems(g Grant) []setElem {
	i := familyIndex(g.Addr)
	var out []setElem
	if g.All {
		src := addrBytes(g.Addr)
		out = append(out, setElem{n.gw.fwdAll[i], src, nil})
		if g.To.IsValid() {
			out = append(out, setElem{n.gw.dnatAll[i], src, addrBytes(g.To)})
		}
		switch {
		case g.Masquerade:
			out = append(out, setElem{n.gw.masqAll[i], src, nil})
		case g.SNAT.IsValid():
			out = append(out, setElem{n.gw.snatAll[i], src, addrBytes(g.SNAT)})
		}
		return out
	}
	if g.External != 0 {
		v := slices.Concat(addrBytes(g.To), []byte{0, 0, 0, 0})
		binary.BigEndian.PutUint16(v[len(v)-4:], g.Port.Num)
		out = append(out, setElem{n.gw.dnat[i], slices.Concat(addrBytes(g.Addr), protoPort(g.Port.Proto, g.External)), v})
	}
	if g.Local {
		set, k := n.grantSetAndKey(Grant{Addr: g.Addr, Port: g.Port})
		return append(out, setElem{set, k, nil})
	}
	if g.External != 0 {
		out = append(out, setElem{n.gw.fwdVia[i], slices.Concat(addrBytes(g.Addr), protoPort(g.Port.Proto, g.External)), nil})
	} else {
		out = append(out, setElem{n.gw.fwd[i], flowElemKey(g), nil})
	}
	switch {
	case g.Masquerade:
		out = append(out, setElem{n.gw.masq[i], flowElemKey(g), nil})
	case g.SNAT.IsValid():
		out = append(out, setElem{n.gw.snat[i], flowElemKey(g), addrBytes(g.SNAT)})
	}
	return out
}

type setElem struct {
	set      *nftables.Set
	key, val []byte
}

// listGateway reads the gateway grants back from the kernel: one per fwd
// element, with the translations found for it, and one local NAT grant per
// dnat element that no fwd element explains. Sets not in have (no gateway
// part installed) hold nothing.
//
// Long on purpose: one pass over the sets rebuilds every kind of gateway grant from maps the kinds share.
func (n *NFTables) listGateway(have map[string]bool) ([]Grant, error) {
	var out []Grant
	for i, f := range ipFamilies {
		get := func(s *nftables.Set) ([]nftables.SetElement, error) { return n.elementsOf(have, s) }
		fwd, err := get(n.gw.fwd[i])
		if err != nil {
			return nil, err
		}
		masq, err := get(n.gw.masq[i])
		if err != nil {
			return nil, err
		}
		snat, err := get(n.gw.snat[i])
		if err != nil {
			return nil, err
		}
		dnat, err := get(n.gw.dnat[i])
		if err != nil {
			return nil, err
		}
		via, err := get(n.gw.fwdVia[i])
		if err != nil {
			return nil, err
		}
		viaKeys := make(map[string]nftables.SetElement, len(via))
		for _, e := range via {
			viaKeys[string(e.Key)] = e
		}
		a := f.alen
		addr := func(b []byte) netip.Addr { x, _ := netip.AddrFromSlice(b[:a]); return x }
		pp := func(b []byte) port.Spec {
			return port.Spec{Proto: port.Protocol(b[0]), Num: binary.BigEndian.Uint16(b[4:])}
		}
		masqueraded := map[string]bool{}
		for _, e := range masq {
			masqueraded[string(e.Key)] = true
		}
		snatTo := map[string]netip.Addr{}
		for _, e := range snat {
			if len(e.Val) >= a {
				snatTo[string(e.Key)] = addr(e.Val)
			}
		}
		// A dnat element is a translation: of a forwarded grant when a fwd
		// element matches it, else a local NAT grant of its own.
		type target struct {
			src, to netip.Addr
			port    port.Spec
		}
		external := map[target]uint16{}
		var locals []Grant
		for _, e := range dnat {
			if len(e.Key) < a+8 || len(e.Val) < a+4 {
				continue
			}
			g := Grant{Addr: addr(e.Key), To: addr(e.Val), External: binary.BigEndian.Uint16(e.Key[a+4:]), Local: true,
				Port: port.Spec{Proto: port.Protocol(e.Key[a]), Num: binary.BigEndian.Uint16(e.Val[a:])}, Timeout: e.Expires, Name: e.Comment}
			if v, ok := viaKeys[string(e.Key)]; ok {
				// A forwarded grant reached through this host's port.
				g.Local, g.Timeout, g.Name = false, v.Expires, v.Comment
				key := flowElemKey(g)
				g.Masquerade, g.SNAT = masqueraded[string(key)], snatTo[string(key)]
				out = append(out, g)
				continue
			}
			external[target{g.Addr, g.To, g.Port}] = g.External
			locals = append(locals, g)
		}
		explained := map[target]bool{}
		for _, e := range fwd {
			if len(e.Key) < 2*a+8 {
				continue
			}
			g := Grant{Addr: addr(e.Key), To: addr(e.Key[a:]), Port: pp(e.Key[2*a:]), Timeout: e.Expires, Name: e.Comment,
				Masquerade: masqueraded[string(e.Key)], SNAT: snatTo[string(e.Key)]}
			t := target{g.Addr, g.To, g.Port}
			g.External, explained[t] = external[t], true
			out = append(out, g)
		}
		for _, g := range locals {
			if !explained[target{g.Addr, g.To, g.Port}] {
				out = append(out, g)
			}
		}
		all, err := n.listAll(i, a, get)
		if err != nil {
			return nil, err
		}
		out = append(out, all...)
	}
	return out, nil
}

// listAll reads family i's forward-all grants.
func (n *NFTables) listAll(i, alen int, get func(*nftables.Set) ([]nftables.SetElement, error)) ([]Grant, error) {
	var sets [4][]nftables.SetElement
	for j, set := range []*nftables.Set{n.gw.fwdAll[i], n.gw.masqAll[i], n.gw.snatAll[i], n.gw.dnatAll[i]} {
		elems, err := get(set)
		if err != nil {
			return nil, err
		}
		sets[j] = elems
	}
	addr := func(b []byte) netip.Addr {
		if len(b) < alen {
			return netip.Addr{}
		}
		a, _ := netip.AddrFromSlice(b[:alen])
		return a
	}
	masq, snat, dnat := map[netip.Addr]bool{}, map[netip.Addr]netip.Addr{}, map[netip.Addr]netip.Addr{}
	for _, e := range sets[1] {
		masq[addr(e.Key)] = true
	}
	for _, e := range sets[2] {
		snat[addr(e.Key)] = addr(e.Val)
	}
	for _, e := range sets[3] {
		dnat[addr(e.Key)] = addr(e.Val)
	}
	var out []Grant
	for _, e := range sets[0] {
		src := addr(e.Key)
		if !src.IsValid() {
			continue
		}
		out = append(out, Grant{Addr: src, All: true, To: dnat[src], Masquerade: masq[src], SNAT: snat[src],
			Timeout: e.Expires, Name: e.Comment})
	}
	return out, nil
}
