package capture

import (
	"fmt"

	"golang.org/x/net/bpf"

	"postern/port"
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

// Filter compiles a classic BPF program that accepts only packets of family
// addressed to one of ports, so that the kernel discards all other traffic
// before it costs a copy or a wake-up. Programs start at the IP header (a
// SOCK_DGRAM packet socket). IPv4 fragments other than the first never
// match; IPv6 packets with extension headers never match (knocks have none).
func Filter(family Family, ports []port.Spec) ([]bpf.Instruction, error) {
	byProto := map[port.Protocol][]uint16{}
	var protos []port.Protocol
	for _, p := range ports {
		if _, seen := byProto[p.Proto]; !seen {
			protos = append(protos, p.Proto)
		}
		byProto[p.Proto] = append(byProto[p.Proto], p.Num)
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
	protoOff, fixedPortOff := uint32(9), uint32(0)
	if family == IPv6 {
		protoOff, fixedPortOff = 6, 40+2
	}
	for _, proto := range protos {
		groupStarts = append(groupStarts, len(prog))
		prog = append(prog,
			item{ins: bpf.LoadAbsolute{Off: protoOff, Size: 1}},
			item{ins: bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(proto)}, jf: toNext},
		)
		if family == IPv4 {
			prog = append(prog,
				item{ins: bpf.LoadAbsolute{Off: 6, Size: 2}},
				item{ins: bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff}, jt: toDrop},
				item{ins: bpf.LoadMemShift{Off: 0}},
				item{ins: bpf.LoadIndirect{Off: 2, Size: 2}},
			)
		} else {
			prog = append(prog, item{ins: bpf.LoadAbsolute{Off: fixedPortOff, Size: 2}})
		}
		nums := byProto[proto]
		for i, n := range nums {
			it := item{ins: bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(n)}, jt: toAccept}
			if i == len(nums)-1 {
				it.jf = toDrop
			}
			prog = append(prog, it)
		}
	}
	// Classic BPF jumps forward at most 255 instructions.
	if len(prog) > 250 {
		return nil, fmt.Errorf("capture filter: %d knock ports are too many for one filter", len(ports))
	}
	dropAt := len(prog)
	acceptAt := dropAt + 1

	out := make([]bpf.Instruction, 0, len(prog)+2)
	for i, it := range prog {
		resolve := func(target int) uint8 {
			var at int
			switch target {
			case 0:
				return 0
			case toAccept:
				at = acceptAt
			case toDrop:
				at = dropAt
			case toNext:
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
