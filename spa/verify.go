package spa

import (
	"crypto/ed25519"
	"crypto/hpke"
	"errors"
	"net/netip"
	"time"

	"github.com/postern/postern/ratelimit"
	"github.com/postern/postern/replay"
)

// Reason says why a packet was refused. The zero value, Accepted, means the
// packet is a valid, fresh knock.
type Reason uint8

// Reasons, in the order the Verifier checks them (docs/PROTOCOL.md §4).
const (
	Accepted Reason = iota
	BadLength
	BadHeader
	BadMAC1
	RateLimited
	DecryptFailed
	UnknownClient
	BadSignature
	MalformedBody
	StaleTimestamp
	FutureTimestamp
	WrongDestination
	Replayed
	StateError
	SSHSourceNotAllowed
	SSHPrincipalNotAllowed
	SSHCertInvalid
	SSHRevoked
	SSHExpired
	SSHNotVerified
	Busy
	BadToken
	numReasons
)

var reasonNames = [numReasons]string{
	Accepted:         "accepted",
	BadLength:        "bad length",
	BadHeader:        "bad header",
	BadMAC1:          "bad mac1",
	RateLimited:      "rate limited",
	DecryptFailed:    "decrypt failed",
	UnknownClient:    "unknown client",
	BadSignature:     "bad signature",
	MalformedBody:    "malformed body",
	StaleTimestamp:   "stale timestamp",
	FutureTimestamp:  "future timestamp",
	WrongDestination: "wrong destination",
	Replayed:         "replay",
	StateError:       "state error",
	// SSH identities (docs/PROTOCOL.md §9).
	SSHSourceNotAllowed:    "ssh source not allowed",
	SSHPrincipalNotAllowed: "ssh principal not allowed",
	SSHCertInvalid:         "ssh certificate invalid",
	SSHRevoked:             "ssh key revoked",
	SSHExpired:             "ssh key expired",
	SSHNotVerified:         "ssh user not verified",
	// Every verification worker's queue was full (a flood of packets with
	// a valid mac1).
	Busy: "verifier busy",
	// Pre-authentication (§2): a token that names no client of this
	// window, or a wrong mac2.
	BadToken: "bad token",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown reason"
}

// AllReasons lists every Reason, for metrics that want a zero for each.
func AllReasons() []Reason {
	rs := make([]Reason, numReasons)
	for i := range rs {
		rs[i] = Reason(i)
	}
	return rs
}

// VerifierConfig is what a Verifier needs.
type VerifierConfig struct {
	Key     ServerPrivateKey
	Clients map[ClientPublicKey]string // authorised clients and their names
	MaxSkew time.Duration              // freshness window, either side of now
	// Destinations are server addresses a knock may be bound to besides the
	// address the packet arrived at (a server behind NAT knows its public
	// address only from configuration).
	Destinations []netip.Addr
	Replay       replay.Store
	Limiter      *ratelimit.Limiter // nil: no per-source limit
	SSH          *SSHTrust          // nil: knocks signed by SSH keys are refused
}

// Verifier checks knocks. It is not safe for concurrent use: the server runs
// one per decode loop, and Clone makes one for each verification worker.
type Verifier struct {
	cfg    VerifierConfig
	key    hpke.PrivateKey
	suite  byte
	layout layout
	mac    *mac1
	sig    []byte      // scratch for the signed message
	tokens *tokenTable // pre-authentication; PrecheckClient's alone
}

// NewVerifier prepares a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Key.k == nil {
		return nil, errors.New("spa: verifier needs the server private key")
	}
	if cfg.Replay == nil {
		return nil, errors.New("spa: verifier needs replay state")
	}
	if cfg.MaxSkew <= 0 {
		return nil, errors.New("spa: max skew must be positive")
	}
	l, _ := layoutFor(cfg.Key.suite)
	return &Verifier{
		cfg:    cfg,
		key:    cfg.Key.k,
		suite:  cfg.Key.suite,
		layout: l,
		mac:    newMAC1(cfg.Key.Public()),
		sig:    make([]byte, 0, len(sigContext)+l.ct+signedLen),
		tokens: newTokenTable(cfg.Key, cfg.Clients),
	}, nil
}

// ClientName returns the configured name of the client of an accepted
// knock: a [[client]] name, or the SSH identity Verify found.
func (v *Verifier) ClientName(k *Knock) string {
	if k.Name != "" {
		return k.Name
	}
	return v.cfg.Clients[k.Client]
}

// Verify checks pkt, which arrived from src for dst at now, and fills k when it
// returns Accepted. Cheap checks come first: junk costs a length test, a header
// test and one keyed hash, allocates nothing and never reaches public-key
// code. An accepted knock has advanced its client's replay timestamp, durably.
func (v *Verifier) Verify(src, dst netip.Addr, pkt []byte, now time.Time, k *Knock) Reason {
	r, c, pre := v.PrecheckClient(src, pkt, now)
	if r != Accepted {
		return r
	}
	return v.OpenAs(src, dst, pkt, now, k, c, pre)
}

// OpenAs is the rest of Verify (HPKE, the client and its signature, the
// body, the time, the destination, replay) for a packet PrecheckClient found pre-authenticated (pre)
// for client c: the knock inside must be that client's.
func (v *Verifier) OpenAs(src, dst netip.Addr, pkt []byte, now time.Time, k *Knock, c ClientPublicKey, pre bool) Reason {
	r := v.open(src, dst, pkt, now, k)
	if r == Accepted && pre && k.Client != c {
		return BadToken
	}
	return r
}

// Clone returns a Verifier that shares v's configuration and state (keys,
// clients, replay state, rate limiter) but has scratch space of its own,
// for another goroutine. OpenAs may run on clones concurrently; PrecheckClient
// stays with one goroutine (its mac1 and token state are not shared).
func (v *Verifier) Clone() *Verifier {
	c := *v
	c.mac = newMAC1(v.cfg.Key.Public())
	c.sig = make([]byte, 0, cap(v.sig))
	return &c
}

// layoutOf returns the layout and kind of a packet of this length, and
// whether it carries pre-authentication (then its sealed part is l.size
// bytes and token and mac2 follow).
func (v *Verifier) layoutOf(pkt []byte) (layout, byte, bool) {
	n, preauth := len(pkt), len(pkt) > 3 && pkt[3] == flagPreauth
	if preauth {
		n -= preauthSize
	}
	if n == PacketSizeSSH && v.suite == SuiteX25519 {
		return layoutSSH(), KindSSH, preauth
	}
	return v.layout, KindNative, preauth
}

// PrecheckClient runs the checks that cost no public-key operation —
// length, header, mac1, then the token and mac2 of a pre-authenticated
// knock, or else the per-source limit — in the order Verify does, and says
// whether the packet was pre-authenticated, and for which client.
func (v *Verifier) PrecheckClient(src netip.Addr, pkt []byte, now time.Time) (Reason, ClientPublicKey, bool) {
	l, kind, preauth := v.layoutOf(pkt)
	size := l.size
	if preauth {
		size += preauthSize
	}
	if len(pkt) != size {
		return BadLength, ClientPublicKey{}, false
	}
	if pkt[0] != Version || pkt[1] != v.suite || pkt[2] != kind || pkt[3] != 0 && !(preauth && kind == KindNative) {
		return BadHeader, ClientPublicKey{}, false
	}
	if !v.mac.ok(pkt[:l.mac1], pkt[l.mac1:l.size]) {
		return BadMAC1, ClientPublicKey{}, false
	}
	if preauth {
		c, r := v.tokens.preauthenticated(pkt, l.size, now)
		return r, c, r == Accepted
	}
	if v.cfg.Limiter != nil && !v.cfg.Limiter.Allow(src, now) {
		return RateLimited, ClientPublicKey{}, false
	}
	return Accepted, ClientPublicKey{}, false
}

// open runs the rest of Verify on a packet that passed PrecheckClient: HPKE, the
// client and its signature, the body, the time, the destination, replay.
func (v *Verifier) open(src, dst netip.Addr, pkt []byte, now time.Time, k *Knock) Reason {
	l, kind, preauth := v.layoutOf(pkt)
	if preauth {
		pkt = pkt[:l.size]
	}
	if len(pkt) != l.size {
		return BadLength
	}
	r, err := hpke.NewRecipient(pkt[offEnc:l.ct], v.key, suiteKDF, suiteAEAD, hpkeInfo)
	if err != nil {
		return DecryptFailed
	}
	pt, err := r.Open(pkt[:headerSize], pkt[l.ct:l.mac1])
	if err != nil {
		return DecryptFailed
	}
	defer clear(pt) // the decrypted request: nothing of it outlives Verify but what k copied
	k.Name = ""
	if kind == KindSSH {
		// The body is checked first: the SSH part is parsed only for a
		// well-formed request.
		if !decodePlaintext(pt, k) {
			return MalformedBody
		}
		if r := v.verifySSH(src, pkt[:l.ct], pt, now, k); r != Accepted {
			return r
		}
	} else {
		var client ClientPublicKey
		copy(client[:], pt[ptClient:])
		if _, ok := v.cfg.Clients[client]; !ok {
			return UnknownClient
		}
		v.sig = append(append(append(v.sig[:0], sigContext...), pkt[:l.ct]...), pt[:signedLen]...)
		if !ed25519.Verify(client[:], v.sig, pt[ptSig:]) {
			return BadSignature
		}
		if !decodePlaintext(pt, k) {
			return MalformedBody
		}
	}
	switch age := now.Sub(k.Time); {
	case age > v.cfg.MaxSkew:
		return StaleTimestamp
	case age < -v.cfg.MaxSkew:
		return FutureTimestamp
	}
	if k.Dest.IsValid() && k.Dest != dst.Unmap() && !v.boundHere(k.Dest) {
		return WrongDestination
	}
	switch err := v.cfg.Replay.AdvanceLane(replay.ID(k.Client), replayLane(k), k.Time.UnixNano()); {
	case errors.Is(err, ErrReplay):
		return Replayed
	case err != nil:
		return StateError
	}
	return Accepted
}

// replayLane is the lane of the replay state a knock is judged in, fixed
// by what it signs: the family of its grant address, or "use the source".
func replayLane(k *Knock) byte {
	switch {
	case k.UseSource:
		return replay.LaneSource
	case k.Allow.Unmap().Is4():
		return replay.LaneIPv4
	}
	return replay.LaneIPv6
}

func (v *Verifier) boundHere(a netip.Addr) bool {
	for _, d := range v.cfg.Destinations {
		if d == a {
			return true
		}
	}
	return false
}
