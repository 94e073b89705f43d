package spa

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Knocks signed by OpenSSH identities (docs/PROTOCOL.md §9): header byte 2
// says which kind of signer; the SSH kind carries, inside the HPKE
// ciphertext, the same body as a native knock followed by the OpenSSH
// public key or certificate and an OpenSSH signature, in a larger fixed
// bucket so that every SSH knock looks alike. Observers learn nothing of
// the identity. Suite 1 only: with a suite-2 encapsulation the bucket would
// not fit one packet.
const (
	KindNative = 0
	KindSSH    = 1

	plaintextSSHSize = 1024
	ptSSH            = ptSig // the body ends here; then u16 len ‖ key blob ‖ u16 len ‖ signature
	// PacketSizeSSH is the length of every SSH-signed knock: one packet
	// under 1200 bytes.
	PacketSizeSSH = headerSize + 32 + plaintextSSHSize + aeadTagSize + mac1Size
)

var sshSigContext = []byte("postern spa v1 ssh signature\x00")

// SSHKey is a key from an authorized_keys file, with the options of its
// line that bear on a knock, as sshd means them.
type SSHKey struct {
	Name string // the key's comment, else its fingerprint
	// From holds OpenSSH from= patterns; empty: any. Both the packet's
	// source and the address the knock asks to grant must match: a
	// source can be spoofed, the granted address is what gets in.
	From []string
	// Expires is expiry-time=: after it the key opens nothing (zero: never).
	Expires time.Time
	// VerifyRequired is verify-required: the signature must be a
	// security key's that attests user verification (a PIN or a
	// fingerprint); any other signature is refused, as sshd does.
	VerifyRequired bool
}

// SSHCA is a key trusted to sign user certificates (a cert-authority
// line), with its line's options.
type SSHCA struct {
	// Principals is principals=: a certificate must name one of them
	// (empty: any of SSHTrust.Principals).
	Principals []string
	From       []string
	Expires    time.Time
}

// SSHTrust is what a server trusts of OpenSSH identities.
type SSHTrust struct {
	// Keys are authorized_keys entries, by the key's wire form.
	Keys map[string]SSHKey
	// CAs are the keys trusted to sign user certificates, by wire form.
	CAs map[string]SSHCA
	// Principals a certificate may name, in the order they are tried.
	Principals []string
	// Revoked is the revoked-keys file (text or KRL); nil: none.
	Revoked *SSHRevocations
}

// SSHName is the policy identity of an SSH knock: "ssh:NAME" for an
// authorized key, "principal:NAME" for a certificate.
func sshKeyName(name string) string   { return "ssh:" + name }
func sshPrincipal(name string) string { return "principal:" + name }

// SSHKeyIdentity and SSHPrincipalIdentity are the client names policy and
// logs see for an authorized key and a certificate principal.
func SSHKeyIdentity(name string) string       { return sshKeyName(name) }
func SSHPrincipalIdentity(name string) string { return sshPrincipal(name) }

// SealSSH makes an SSH-signed knock to server: the signer is an OpenSSH
// key (a file, or a key held by ssh-agent or a hardware token), or a
// certificate signer (ssh.NewCertSigner). RSA keys sign with SHA-256.
func SealSSH(signer ssh.Signer, server ServerPublicKey, k Knock) ([]byte, error) {
	return sealSSH(signer, server, k, hpkeEncap)
}

func sealSSH(signer ssh.Signer, server ServerPublicKey, k Knock, encap encapFunc) ([]byte, error) {
	if err := checkKnock(&k); err != nil {
		return nil, err
	}
	if server.suite != SuiteX25519 {
		return nil, errors.New("knocks signed by SSH keys need a suite-1 server key (a post-quantum knock with an SSH identity would not fit one packet)")
	}
	return sealPacket(encap, server, layoutSSH(), KindSSH, plaintextSSHSize, nil, k.Time, func(headerAndEnc, pt []byte) error {
		encodePlaintext(pt, &k) // the body; the native client-key field stays zero
		clear(pt[ptClient : ptClient+32])
		blob := signer.PublicKey().Marshal()
		var sig *ssh.Signature
		var err error
		msg := sshSignedMessage(headerAndEnc, pt[:ptSSH], blob)
		if as, ok := signer.(ssh.AlgorithmSigner); ok && isRSA(signer.PublicKey()) {
			sig, err = as.SignWithAlgorithm(rand.Reader, msg, ssh.KeyAlgoRSASHA256)
		} else {
			sig, err = signer.Sign(rand.Reader, msg)
		}
		if err != nil {
			return fmt.Errorf("signing the knock: %w", err)
		}
		sb := ssh.Marshal(sig)
		if 2+len(blob)+2+len(sb) > plaintextSSHSize-ptSSH {
			return fmt.Errorf("the SSH key or certificate is too large for one knock (%d bytes, at most %d)",
				len(blob)+len(sb), plaintextSSHSize-ptSSH-4)
		}
		o := ptSSH
		binary.BigEndian.PutUint16(pt[o:], uint16(len(blob)))
		o += 2 + copy(pt[o+2:], blob)
		binary.BigEndian.PutUint16(pt[o:], uint16(len(sb)))
		copy(pt[o+2:], sb)
		return nil
	})
}

func isRSA(k ssh.PublicKey) bool {
	if c, ok := k.(*ssh.Certificate); ok {
		k = c.Key
	}
	return k.Type() == ssh.KeyAlgoRSA
}

func layoutSSH() layout {
	ct := offEnc + 32
	return layout{ct: ct, mac1: ct + plaintextSSHSize + aeadTagSize, size: PacketSizeSSH}
}

func sshSignedMessage(headerAndEnc, body, blob []byte) []byte {
	m := append(append([]byte{}, sshSigContext...), headerAndEnc...)
	m = append(m, body...)
	return append(m, blob...)
}

// verifySSH checks the SSH part of a decrypted SSH knock from src: the key
// or certificate is trusted, the signature is good, the source is allowed.
// It fills k.Client (the replay identity) and k.Name (the policy identity).
func (v *Verifier) verifySSH(src netip.Addr, headerAndEnc, pt []byte, now time.Time, k *Knock) Reason {
	t := v.cfg.SSH
	if t == nil {
		return UnknownClient
	}
	o := ptSSH
	n := int(binary.BigEndian.Uint16(pt[o:]))
	if o+2+n+2 > len(pt) {
		return MalformedBody
	}
	blob := pt[o+2 : o+2+n]
	o += 2 + n
	m := int(binary.BigEndian.Uint16(pt[o:]))
	if o+2+m > len(pt) || !allZero(pt[o+2+m:]) || !allZero(pt[ptClient:ptClient+32]) {
		return MalformedBody
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return MalformedBody
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(pt[o+2:o+2+m], &sig); err != nil || sig.Format == ssh.KeyAlgoRSA {
		return BadSignature // (ssh-rsa is SHA-1: never)
	}
	if err := key.Verify(sshSignedMessage(headerAndEnc, pt[:ptSSH], blob), &sig); err != nil {
		return BadSignature
	}
	if cert, ok := key.(*ssh.Certificate); ok {
		return v.verifyCert(src, cert, now, k)
	}
	entry, ok := t.Keys[string(blob)]
	if !ok {
		return UnknownClient
	}
	if t.Revoked.KeyRevoked(key) {
		return SSHRevoked
	}
	if !entry.Expires.IsZero() && now.After(entry.Expires) {
		return SSHExpired
	}
	if !fromAllows(entry.From, src, k) {
		return SSHSourceNotAllowed
	}
	if entry.VerifyRequired && !userVerified(key, &sig) {
		return SSHNotVerified
	}
	k.Client = ClientPublicKey(sha256.Sum256(append([]byte("ssh key\x00"), blob...)))
	k.Name = sshKeyName(entry.Name)
	return Accepted
}

func (v *Verifier) verifyCert(src netip.Addr, cert *ssh.Certificate, now time.Time, k *Knock) Reason {
	t := v.cfg.SSH
	ca, trusted := t.CAs[string(cert.SignatureKey.Marshal())]
	if cert.CertType != ssh.UserCert || !trusted {
		return UnknownClient
	}
	if t.Revoked.CertRevoked(cert) {
		return SSHRevoked
	}
	if !ca.Expires.IsZero() && now.After(ca.Expires) {
		return SSHExpired
	}
	// The first principal of the configuration's order that the
	// certificate names and its CA's principals= (if any) allows.
	principal := ""
	for _, p := range t.Principals {
		if principal == "" && slices.Contains(cert.ValidPrincipals, p) &&
			(len(ca.Principals) == 0 || slices.Contains(ca.Principals, p)) {
			principal = p
		}
	}
	if principal == "" {
		return SSHPrincipalNotAllowed
	}
	checker := ssh.CertChecker{
		Clock:                    func() time.Time { return now },
		SupportedCriticalOptions: []string{"source-address"},
		IsUserAuthority:          func(auth ssh.PublicKey) bool { _, ok := t.CAs[string(auth.Marshal())]; return ok },
	}
	if err := checker.CheckCert(principal, cert); err != nil {
		return SSHCertInvalid
	}
	if !fromAllows(ca.From, src, k) {
		return SSHSourceNotAllowed
	}
	if list, ok := cert.CriticalOptions["source-address"]; ok && !fromAllows(strings.Split(list, ","), src, k) {
		return SSHSourceNotAllowed
	}
	id := fmt.Sprintf("ssh cert\x00%s\x00%s\x00%d", ssh.FingerprintSHA256(cert.SignatureKey), cert.KeyId, cert.Serial)
	k.Client = ClientPublicKey(sha256.Sum256([]byte(id)))
	k.Name = sshPrincipal(principal)
	return Accepted
}

// userVerified reports whether sig, made by key, is a security key's
// signature whose flags say the user was verified (PROTOCOL.u2f: the
// signature's extra fields are flags, then a counter).
func userVerified(key ssh.PublicKey, sig *ssh.Signature) bool {
	switch key.Type() {
	case ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256:
	default:
		return false
	}
	const flagUserVerified = 0x04
	return len(sig.Rest) >= 1 && sig.Rest[0]&flagUserVerified != 0
}

// fromAllows applies from= or source-address patterns (none: any) to the
// packet's source and to the address the knock asks to grant: sshd checks
// the address a connection comes from, and for a knock that is the
// granted one; the source alone could be spoofed by the key's holder.
func fromAllows(patterns []string, src netip.Addr, k *Knock) bool {
	if len(patterns) == 0 {
		return true
	}
	granted := k.Allow
	if k.UseSource {
		granted = src
	}
	return MatchFrom(patterns, src) && MatchFrom(patterns, granted)
}

// MatchFrom applies OpenSSH's from= / source-address patterns to addr:
// addresses, CIDR blocks, and * ? wildcards on the address text; a
// pattern starting with ! that matches refuses. Host names never match (no
// DNS for a knock).
func MatchFrom(patterns []string, addr netip.Addr) bool {
	addr = addr.Unmap()
	text, matched := addr.String(), false
	for _, p := range patterns {
		p = strings.TrimSpace(p)
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		hit := false
		if pfx, err := netip.ParsePrefix(p); err == nil {
			hit = pfx.Contains(addr)
		} else if a, err := netip.ParseAddr(p); err == nil {
			hit = a.Unmap() == addr
		} else if ok, _ := path.Match(p, text); ok {
			hit = true
		}
		if hit && neg {
			return false
		}
		matched = matched || hit
	}
	return matched
}
