// Package spa implements postern SPA v1, the native single-packet
// authorization protocol: building a knock (Seal) and checking one (Verifier),
// the keys both sides use, and the replay and rate-limit state the checks
// need. The byte layout and the order of the checks are specified in
// docs/PROTOCOL.md; this package and that document must agree.
//
// The package never touches the firewall and never sends anything: a
// Verifier turns bytes into a Knock or a Reason and the caller acts on it.
package spa
