package fko

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// GPG drives the gpg program for fwknop's GnuPG mode. fwknop links gpgme,
// which itself runs gpg; postern runs gpg directly in the same way (binary
// OpenPGP on pipes, machine-readable --status-fd lines for the signature),
// so it needs no cgo and no library beyond the gpg it already requires.
type GPG struct {
	Exe     string // default "gpg"
	HomeDir string // GNUPGHOME; empty: gpg's default

	// Client side.
	Recipient string // --gpg-recip
	Signer    string // --gpg-sign; empty: unsigned
	SignerPW  string // passphrase of the signing key, if it has one

	// Server side.
	DecryptID string // GPG_DECRYPT_ID
	DecryptPW string // GPG_DECRYPT_PW; empty with GPG_ALLOW_NO_PW
}

// GPGSigner is who signed a GnuPG packet, from gpg's status lines.
type GPGSigner struct {
	KeyID       string // long key ID (GOODSIG)
	Fingerprint string // primary key fingerprint (VALIDSIG)
	Good        bool   // the signature verified, by a key gpg holds fully valid
	Untrusted   bool   // it verified, but gpg does not hold the key valid (a bad signature, as fwknopd has it)
	Status      string // the status keyword of a signature that did not verify (BADSIG, ERRSIG, …)
}

// Problem says, for a log line, why the signature does not count: ""
// when it is good.
func (s *GPGSigner) Problem() string {
	switch {
	case s == nil:
		return "unsigned"
	case s.Untrusted:
		return "the signing key is not fully valid in the keyring (gpg's trust)"
	case s.Good:
		return ""
	}
	switch s.Status {
	case "BADSIG":
		return "bad signature"
	case "ERRSIG":
		return "signature not checked (is the signing key in the keyring?)"
	case "EXPSIG":
		return "expired signature"
	case "EXPKEYSIG":
		return "signed with an expired key"
	case "REVKEYSIG":
		return "signed with a revoked key"
	}
	return "signature not verified"
}

// Matches reports whether the signer is one of ids (GPG_REMOTE_ID: key IDs,
// compared as suffixes of the fingerprint, as short and long IDs are) or one
// of fingerprints (GPG_FINGERPRINT_ID).
func (s *GPGSigner) Matches(ids, fingerprints []string) bool {
	if s == nil || !s.Good {
		return false
	}
	norm := func(x string) string {
		return strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(x, "0x"), " ", ""))
	}
	for _, id := range ids {
		id = norm(id)
		if id == "ANY" || (len(id) >= 8 && (strings.HasSuffix(s.Fingerprint, id) || strings.HasSuffix(s.KeyID, id))) {
			return true
		}
	}
	for _, fp := range fingerprints {
		if norm(fp) == s.Fingerprint {
			return true
		}
	}
	return false
}

// maxPlaintext bounds what gpg may produce when decrypting: a valid FKO
// plaintext is under 1 500 bytes, while a few hundred bytes of compressed
// zeros encrypted to the server's key expand to gigabytes (a decompression
// bomb that anyone holding the public key can send).
const maxPlaintext = 4096

// errTooLarge is decrypt's answer when gpg's output passed maxPlaintext.
var errTooLarge = errors.New("fko: gpg output too large: not an fwknop message")

// capWriter keeps at most limit bytes and calls over once when more come.
type capWriter struct {
	buf   bytes.Buffer
	limit int
	over  func()
	hit   bool
}

func (w *capWriter) Write(p []byte) (int, error) {
	if w.limit > 0 && w.buf.Len()+len(p) > w.limit {
		if !w.hit {
			w.hit = true
			w.over()
		}
		return 0, errTooLarge
	}
	return w.buf.Write(p)
}

func (g *GPG) run(stdin []byte, passphrase string, args ...string) (stdout, status []byte, err error) {
	// Encrypting: the recipient key is the one named, whatever gpg's
	// web of trust says of it (as fwknop's client does).
	return g.runLimited(stdin, passphrase, 0, append([]string{"--trust-model", "always"}, args...)...)
}

// runLimited runs gpg; with limit > 0, gpg is killed as soon as its output
// passes limit bytes (its status output is bounded as well).
func (g *GPG) runLimited(stdin []byte, passphrase string, limit int, args ...string) (stdout, status []byte, err error) {
	exe := g.Exe
	if exe == "" {
		exe = "gpg"
	}
	base := []string{"--batch", "--no-tty", "--quiet", "--status-fd", "2"}
	if g.HomeDir != "" {
		base = append(base, "--homedir", g.HomeDir)
	}
	var extra []*os.File
	if passphrase != "" {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, err
		}
		defer r.Close()
		go func() { w.WriteString(passphrase); w.Close() }()
		extra = append(extra, r)
		base = append(base, "--pinentry-mode", "loopback", "--passphrase-fd", "3")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if limit > 0 {
		base = append(base, "--max-output", strconv.Itoa(limit))
	}
	cmd := exec.CommandContext(ctx, exe, append(base, args...)...)
	out := &capWriter{limit: limit, over: cancel}
	errb := &capWriter{limit: 64 << 10, over: cancel}
	if limit == 0 {
		errb.limit = 0
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = bytes.NewReader(stdin), out, errb, extra
	err = cmd.Run()
	if out.hit || errb.hit {
		return nil, nil, errTooLarge
	}
	return out.buf.Bytes(), errb.buf.Bytes(), err
}

// encrypt encrypts and (with a signer) signs pt, returning unpadded base64.
func (g *GPG) encrypt(pt string) (string, error) {
	if g.Recipient == "" {
		return "", errors.New("fko: GnuPG needs a recipient (--gpg-recip)")
	}
	args := []string{"--encrypt", "--recipient", g.Recipient}
	if g.Signer != "" {
		args = append(args, "--sign", "--local-user", g.Signer)
	}
	out, status, err := g.run([]byte(pt), g.SignerPW, args...)
	if err != nil {
		return "", fmt.Errorf("fko: gpg --encrypt: %v: %s", err, lastLines(status))
	}
	text := b64.EncodeToString(out)
	if !strings.HasPrefix(text, gpgB64Prefix) {
		// fwknop strips "hQ" unconditionally: only an old-format PKESK
		// packet of 256+ bytes (an RSA recipient key) survives that.
		return "", errors.New("fko: the GnuPG message does not start with an old-format public-key packet (\"hQ\"); fwknop needs an RSA recipient key")
	}
	return text, nil
}

// decrypt decrypts base64 text and reports the signer, if any.
func (g *GPG) decrypt(text string) (string, *GPGSigner, error) {
	raw, err := b64Decode(text)
	if err != nil {
		return "", nil, errDecrypt
	}
	args := []string{"--decrypt"}
	if g.DecryptID != "" {
		args = append(args, "--try-secret-key", g.DecryptID)
	}
	out, status, err := g.runLimited(raw, g.DecryptPW, maxPlaintext, args...)
	if errors.Is(err, errTooLarge) {
		return "", nil, errDecrypt
	}
	var signer *GPGSigner
	decrypted, trusted := false, false
	var decryptedWith []string
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(strings.TrimPrefix(line, "[GNUPG:] "))
		if !strings.HasPrefix(line, "[GNUPG:] ") || len(f) == 0 {
			continue
		}
		switch f[0] {
		case "DECRYPTION_OKAY":
			decrypted = true
		case "DECRYPTION_KEY": // <fpr> <primary fpr> <ownertrust>
			decryptedWith = append(decryptedWith, f[1:min(3, len(f))]...)
		case "TRUST_FULLY", "TRUST_ULTIMATE":
			// gpg's own validity of the signing key, as gpgme reports it
			// to fwknopd: only a fully valid key makes a good signature.
			trusted = true
		case "GOODSIG":
			if signer == nil {
				signer = &GPGSigner{}
			}
			if len(f) > 1 {
				signer.KeyID = strings.ToUpper(f[1])
			}
			signer.Good = true
		case "VALIDSIG":
			if signer == nil {
				signer = &GPGSigner{}
			}
			// VALIDSIG <fpr> … <primary-key-fpr> is the last field.
			if len(f) > 1 {
				signer.Fingerprint = strings.ToUpper(f[len(f)-1])
			}
		case "BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG":
			signer = &GPGSigner{Good: false, Status: f[0]}
			if len(f) > 1 {
				signer.KeyID = strings.ToUpper(f[1])
			}
		}
	}
	if !decrypted || (err != nil && !decrypted) {
		return "", nil, errDecrypt
	}
	if !g.decryptedWith(decryptedWith) {
		return "", nil, errDecrypt // another secret key of the keyring: not this stanza's packet
	}
	if signer != nil && signer.Good && !trusted {
		signer.Good = false
		signer.Untrusted = true
	}
	return string(out), signer, nil
}

// decryptedWith reports whether the key gpg decrypted with is the stanza's
// GPG_DECRYPT_ID (a key id or fingerprint, matched as a suffix); an id
// that is not hex (a user id) is left to gpg's --try-secret-key.
func (g *GPG) decryptedWith(fprs []string) bool {
	id := strings.ToUpper(strings.TrimPrefix(strings.ReplaceAll(g.DecryptID, " ", ""), "0x"))
	if id == "" || strings.Trim(id, "0123456789ABCDEF") != "" {
		return true
	}
	if len(fprs) == 0 {
		return true // a gpg too old to say which key
	}
	for _, f := range fprs {
		if strings.HasSuffix(strings.ToUpper(f), id) {
			return true
		}
	}
	return false
}

func lastLines(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = "…" + s[len(s)-300:]
	}
	return s
}
