package client

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// SSHKeySigner reads an OpenSSH private key file (and, beside it,
// FILE-cert.pub if present: a certificate for the key, as ssh does).
// A key with a passphrase is refused: put it in ssh-agent instead.
func SSHKeySigner(path string) (ssh.Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("%s has a passphrase: ssh-add it and knock with --ssh-agent", path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return withCert(s, path+"-cert.pub")
}

// withCert wraps s in a certificate signer if certPath holds a
// certificate for s's key.
func withCert(s ssh.Signer, certPath string) (ssh.Signer, error) {
	data, err := os.ReadFile(certPath)
	if err != nil {
		return s, nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return s, nil
	}
	return ssh.NewCertSigner(cert, s)
}

// SSHAgentSigner picks a key held by the ssh-agent at SSH_AUTH_SOCK: the one
// whose SHA256 fingerprint or comment is want ("" if the agent holds only
// one key). The private key never leaves the agent (or the hardware token
// behind it); a certificate the agent holds for the key is preferred, as
// ssh prefers it.
func SSHAgentSigner(want string) (ssh.Signer, func(), error) {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, nil, errors.New("--ssh-agent: SSH_AUTH_SOCK is not set (is ssh-agent running?)")
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("ssh-agent: %w", err)
	}
	done := func() { conn.Close() }
	ag := agent.NewClient(conn)
	keys, err := ag.List()
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("ssh-agent: %w", err)
	}
	signers, err := ag.Signers()
	if err != nil || len(signers) != len(keys) {
		done()
		return nil, nil, fmt.Errorf("ssh-agent: listing signers: %v", err)
	}
	var pick ssh.Signer
	var names []string
	for i, k := range keys {
		pub := signers[i].PublicKey()
		base := pub
		if c, ok := pub.(*ssh.Certificate); ok {
			base = c.Key
		}
		fp := ssh.FingerprintSHA256(base)
		names = append(names, fmt.Sprintf("%s %s", fp, k.Comment))
		if want != "" && want != fp && want != k.Comment {
			continue
		}
		switch {
		case pick == nil:
			pick = signers[i]
		case !sameKey(baseKey(pick.PublicKey()), base):
			done()
			return nil, nil, fmt.Errorf("ssh-agent holds several keys; name one with --ssh-agent FINGERPRINT|COMMENT:\n  %s",
				strings.Join(names, "\n  "))
		case pub.Type() != base.Type(): // the certificate for the same key
			pick = signers[i]
		}
	}
	if pick == nil {
		done()
		if len(keys) == 0 {
			return nil, nil, errors.New("ssh-agent holds no key (ssh-add one)")
		}
		return nil, nil, fmt.Errorf("ssh-agent holds no key %q; it holds:\n  %s", want, strings.Join(names, "\n  "))
	}
	return pick, done, nil
}

func sameKey(a, b ssh.PublicKey) bool { return string(a.Marshal()) == string(b.Marshal()) }

func baseKey(k ssh.PublicKey) ssh.PublicKey {
	if c, ok := k.(*ssh.Certificate); ok {
		return c.Key
	}
	return k
}
