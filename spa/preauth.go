package spa

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/postern/postern/ratelimit"
)

// Pre-authentication (docs/PROTOCOL.md §2): mac1 proves only that a sender
// holds the server's public key — which every client, and every former
// client, does. A client given a token key by the server adds, after mac1,
// a token that names it for the current time window and a mac2 over the
// whole packet with that key. The server finds the client by map lookup
// and checks mac2 before any public-key work, and verifies such knocks on
// a queue that packets without a valid token never reach: a flood made
// with the server's public key no longer crowds out its clients.
//
//	token = HMAC-SHA256(K_c, "postern token v1" ‖ 0x00 ‖ window)[:8]   window = knock time / 30 s, big-endian uint64
//	mac2  = HMAC-SHA256(K_c, "postern mac2 v1" ‖ 0x00 ‖ packet up to mac2)[:16]
//	K_c   = HMAC-SHA256(SHA-256("postern token secret v1" ‖ 0x00 ‖ server private key), client public key)
//
// The token changes every window, so knocks cannot be linked across
// windows by it; removing a client from the server's configuration makes
// its tokens match nothing.
const (
	tokenSize    = 8
	mac2Size     = 16
	preauthSize  = tokenSize + mac2Size
	flagPreauth  = 0x01 // header byte 3: a token and mac2 follow mac1
	tokenWindow  = 30 * time.Second
	tokenKeySize = 32
)

var (
	tokenLabel  = []byte("postern token v1\x00")
	mac2Label   = []byte("postern mac2 v1\x00")
	secretLabel = []byte("postern token secret v1\x00")
)

// TokenKey is the pre-authentication key the server gives client c
// (postern token): derived from the server's private key, so the server
// stores nothing per client.
func TokenKey(server ServerPrivateKey, c ClientPublicKey) []byte {
	b, _ := server.k.Bytes()
	s := sha256.New()
	s.Write(secretLabel)
	s.Write(b)
	m := hmac.New(sha256.New, s.Sum(nil))
	m.Write(c[:])
	return m.Sum(nil)
}

func windowOf(t time.Time) uint64 { return uint64(t.Unix()) / uint64(tokenWindow/time.Second) }

func tokenFor(key []byte, window uint64) [tokenSize]byte {
	m := hmac.New(sha256.New, key)
	m.Write(tokenLabel)
	m.Write(binary.BigEndian.AppendUint64(nil, window))
	var t [tokenSize]byte
	copy(t[:], m.Sum(nil))
	return t
}

func mac2Of(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(mac2Label)
	m.Write(msg)
	return m.Sum(nil)[:mac2Size]
}

// addPreauth appends token and mac2 to a sealed packet whose header
// already says they follow.
func addPreauth(pkt, key []byte, at time.Time) []byte {
	t := tokenFor(key, windowOf(at))
	pkt = append(pkt, t[:]...)
	return append(pkt, mac2Of(key, pkt)...)
}

var errTokenKey = errors.New("spa: a token key is 32 bytes (postern token's output)")

// tokenEntry is what a token names.
type tokenEntry struct {
	client ClientPublicKey
	key    []byte
}

// tokenTable maps the tokens of the windows around now to their clients;
// it is rebuilt when the window moves. Only the capture goroutine uses it.
type tokenTable struct {
	keys   map[ClientPublicKey][]byte
	window uint64
	m      map[[tokenSize]byte]tokenEntry
	limit  *ratelimit.Limiter // per client: a burst of fresh knocks costs one client's budget
	// seen holds the mac2 of every pre-authenticated knock that passed,
	// with its window: an exact re-send (a captured knock replayed, from
	// any address) is refused as a replay before it can charge its
	// client's budget, so replaying a client's old knocks cannot lock it
	// out. Entries go after the windows a token is valid in.
	seen map[[mac2Size]byte]uint64
}

// maxSeen bounds the remembered mac2s (a client knocks at most 5 times a
// second per its budget; 65 536 covers thousands of busy clients).
const maxSeen = 1 << 16

func newTokenTable(server ServerPrivateKey, clients map[ClientPublicKey]string) *tokenTable {
	t := &tokenTable{keys: make(map[ClientPublicKey][]byte, len(clients)), limit: ratelimit.New(5, 10, 65536)}
	for c := range clients {
		t.keys[c] = TokenKey(server, c)
	}
	return t
}

// lookup finds the client a token names, in this window or the ones next
// to it (clocks within max_skew).
func (t *tokenTable) lookup(tok []byte, now time.Time) (tokenEntry, bool) {
	if w := windowOf(now); t.m == nil || w != t.window {
		t.window = w
		for mac, seenIn := range t.seen {
			if seenIn+2 < w {
				delete(t.seen, mac)
			}
		}
		t.m = make(map[[tokenSize]byte]tokenEntry, 3*len(t.keys))
		for c, k := range t.keys {
			for _, win := range []uint64{w - 1, w, w + 1} {
				t.m[tokenFor(k, win)] = tokenEntry{c, k}
			}
		}
	}
	e, ok := t.m[[tokenSize]byte(tok)]
	return e, ok
}

// preauthenticated checks the token and mac2 of a packet whose sealed part
// ends at end, and the client's own rate limit. It returns the client.
func (t *tokenTable) preauthenticated(pkt []byte, end int, now time.Time) (ClientPublicKey, Reason) {
	e, ok := t.lookup(pkt[end:end+tokenSize], now)
	if !ok || subtle.ConstantTimeCompare(mac2Of(e.key, pkt[:end+tokenSize]), pkt[end+tokenSize:]) != 1 {
		return ClientPublicKey{}, BadToken
	}
	mac := [mac2Size]byte(pkt[end+tokenSize:])
	if _, again := t.seen[mac]; again {
		return ClientPublicKey{}, Replayed
	}
	if t.seen == nil {
		t.seen = map[[mac2Size]byte]uint64{}
	}
	if len(t.seen) < maxSeen {
		t.seen[mac] = t.window
	}
	// The limiter keys by address: the client key's first 16 bytes
	// stand in for one.
	if !t.limit.Allow(netip.AddrFrom16([16]byte(e.client[:16])), now) {
		return ClientPublicKey{}, RateLimited
	}
	return e.client, Accepted
}
