package capture

import (
	"fmt"

	"golang.org/x/net/bpf"

	"github.com/postern/postern/port"
)

// Family selects which IP version a filter is compiled for; an AF_PACKET
// socket per family keeps each filter simple and lets the ethertype, not the
// filter, tell the versions apart.
type Family int

// Families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// snapLen is what an accepted packet may bring to user space: a knock is far
// smaller, and the parser checks lengths against what it got.
const snapLen = 2048

// Match is one kind of packet a capture passes: a protocol and a range of
// destination ports, or, for ICMP, echo requests (ICMPv6 echo requests on
// IPv6) of any size.
type Match struct {
	Proto  port.Protocol // port.TCP, port.UDP or ICMP
	Lo, Hi uint16
}

// ICMP is the protocol value of a Match for echo requests.
const ICMP = port.ICMP

// PortMatches turns single ports into Matches.
func PortMatches(ports []port.Spec) []Match {
	out := make([]Match, len(ports))
	for i, p := range ports {
		out[i] = Match{Proto: p.Proto, Lo: p.Num, Hi: p.Num}
	}
	return out
}

// Filter compiles a classic BPF program that accepts only packets of family
// that fit one of matches, so that the kernel discards all other traffic
// before it costs a copy or a wake-up. Programs start at the IP header (a
// SOCK_DGRAM packet socket). When UDP ports are matched, UDP fragments
// pass too (only the first carries the port; the reassembler decides);
// other fragments and IPv6 packets with other extension headers never
// match (knocks have none).
//
// Long on purpose: one classic-BPF program emitted in order; splitting it would split its jump arithmetic.
func Filter(family Family, matches []Match) ([]bpf.Instruction, error) {
	byProto := map[port.Protocol][]Match{}
	var protos []port.Protocol
	for _, m := range matches {
		if _, seen := byProto[m.Proto]; !seen {
			protos = append(protos, m.Proto)
		}
		byProto[m.Proto] = append(byProto[m.Proto], m)
	}

	const (
		toAccept = -1
		toDrop   = -2
		toNext   = -3 // the next protocol group (or drop after the last)
	)
	type item struct {
		ins    bpf.Instruction
		jt, jf int // targets for conditional jumps; 0 = fall through
	}
	var prog []item
	var groupStarts []int
	protoOff, l4Off := uint32(9), uint32(0)
	if family == IPv6 {
		protoOff, l4Off = 6, 40
	}
	if _, udp := byProto[port.UDP]; udp && family == IPv6 {
		// UDP fragments (a fragment header right after the fixed one) go
		// to the reassembler, whatever their port: only the first one
		// carries it.
		groupStarts = append(groupStarts, len(prog))
		prog = append(prog,
			item{ins: bpf.LoadAbsolute{Off: 6, Size: 1}},
			item{ins: bpf.JumpIf{Cond: bpf.JumpEqual, Val: 44}, jf: toNext},
			item{ins: bpf.LoadAbsolute{Off: 40, Size: 1}},
			item{ins: bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port.UDP)}, jt: toAccept, jf: toDrop},
		)
	}
	for _, proto := range protos {
		groupStarts = append(groupStarts, len(prog))
		wire, echo := uint32(proto), uint32(8)
		if proto == ICMP && family == IPv6 {
			wire, echo = 58, 128
		}
		prog = append(prog,
			item{ins: bpf.LoadAbsolute{Off: protoOff, Size: 1}},
			item{ins: bpf.JumpIf{Cond: bpf.JumpEqual, Val: wire}, jf: toNext},
		)
		if family == IPv4 {
			// A fragment after the first has no transport header: UDP
			// ones go to the reassembler (a knock may be fragmented),
			// others are never knocks.
			notFirst := toDrop
			if proto == port.UDP {
				notFirst = toAccept
			}
			prog = append(prog,
				item{ins: bpf.LoadAbsolute{Off: 6, Size: 2}},
				item{ins: bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff}, jt: notFirst},
				item{ins: bpf.LoadMemShift{Off: 0}},
			)
		}
		// What to compare: the ICMP type, or the destination port.
		load := func(off, size uint32) bpf.Instruction {
			if family == IPv4 {
				return bpf.LoadIndirect{Off: off, Size: int(size)}
			}
			return bpf.LoadAbsolute{Off: l4Off + off, Size: int(size)}
		}
		if proto == ICMP {
			prog = append(prog, item{ins: load(0, 1)},
				item{ins: bpf.JumpIf{Cond: bpf.JumpEqual, Val: echo}, jt: toAccept, jf: toDrop})
			continue
		}
		prog = append(prog, item{ins: load(2, 2)})
		ms := byProto[proto]
		for i, m := range ms {
			last := i == len(ms)-1
			if m.Lo == m.Hi {
				it := item{ins: bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(m.Lo)}, jt: toAccept}
				if last {
					it.jf = toDrop
				}
				prog = append(prog, it)
				continue
			}
			// Lo ≤ port ≤ Hi: skip the range test when below Lo, accept
			// unless above Hi.
			below := item{ins: bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: uint32(m.Lo)}, jf: 1}
			above := item{ins: bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: uint32(m.Hi)}, jf: toAccept}
			if last {
				below.jf, above.jt = toDrop, toDrop
			}
			prog = append(prog, below, above)
		}
	}
	// Classic BPF jumps forward at most 255 instructions.
	if len(prog) > 250 {
		return nil, fmt.Errorf("capture filter: %d knock ports are too many for one filter", len(matches))
	}
	dropAt := len(prog)
	acceptAt := dropAt + 1

	out := make([]bpf.Instruction, 0, len(prog)+2)
	for i, it := range prog {
		resolve := func(target int) uint8 {
			var at int
			switch {
			case target >= 0:
				return uint8(target) // a literal skip
			case target == toAccept:
				at = acceptAt
			case target == toDrop:
				at = dropAt
			case target == toNext:
				at = dropAt
				for _, s := range groupStarts {
					if s > i {
						at = s
						break
					}
				}
			}
			return uint8(at - i - 1)
		}
		if j, ok := it.ins.(bpf.JumpIf); ok {
			j.SkipTrue, j.SkipFalse = resolve(it.jt), resolve(it.jf)
			it.ins = j
		}
		out = append(out, it.ins)
	}
	return append(out, bpf.RetConstant{Val: 0}, bpf.RetConstant{Val: snapLen}), nil
}
