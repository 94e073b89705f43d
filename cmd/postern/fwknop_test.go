package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
)

// Keys from fwknop --key-gen.
const (
	fwKey   = "abeUA3RQC9+ZENW7owAnS7mmgxFydWUH2LsmiAJv0t4="
	fwHMAC  = "EIxOxaa/ti/KNGPEQx315I9GhXGtEmjvyPtQYXWJWMrt0vqGcdTU5fpV+e4Ol8kMLcF1E6KY3Y9rqzM7Ww/6Ig=="
	fwKey2  = "bGh7mHBRbkmp6ueJv+4O9+DgOeeEKzK+EZx6spyoZSg="
	fwHMAC2 = "GLSCjrX0h2/dnKQQGSpqhtPivBumoeROBOylaQSDRjWCPDkNoq/W5xk+hBq6CFvQGFR3XVns+41nyNM6z7Xvlg=="
)

// fwknopRig is a postern server reading an access.conf.
func fwknopRig(t *testing.T, access string) *rig {
	t.Helper()
	return fwknopRigWith(t, rigOptions{noSPA: true}, access, `max_packet_age = "120s"`)
}

// fwknopRigWith is fwknopRig on the topology o gives, with more [fwknop]
// keys and tables after them in extra.
func fwknopRigWith(t *testing.T, o rigOptions, access, extra string) *rig {
	t.Helper()
	netnstest.Require(t, "fwknop", "nft")
	r := newRig(t, o)
	path := r.writeFile("access.conf", access)
	r.writeFile("postern.toml", fmt.Sprintf(`interface = %q
state_dir = %q
metrics_listen = "127.0.0.1:9101"
[fwknop]
access_file = %q
%s
`, netnstest.Interface, r.dir+"/state", path, extra))
	return r
}

// fwknop runs the real fwknop client in the client namespace, with its own
// HOME so that no ~/.fwknoprc is read or written.
func (r *rig) fwknop(args ...string) string {
	r.t.Helper()
	cmd := r.p.Client.Command(context.Background(), "fwknop", append(args, "--no-rc-file", "--no-save-args")...)
	cmd.Env = append(os.Environ(), "HOME="+r.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("fwknop %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRealFwknopClientKnocksPostern(t *testing.T) {
	t.Parallel()
	r := fwknopRig(t, `# three stanzas; postern tries each, as fwknopd does
SOURCE              ANY
KEY_BASE64          `+fwKey+`
HMAC_KEY_BASE64     `+fwHMAC+`
OPEN_PORTS          tcp/22
FW_ACCESS_TIMEOUT   2

SOURCE              198.18.0.0/24
KEY_BASE64          `+fwKey2+`
HMAC_KEY_BASE64     `+fwHMAC2+`
HMAC_DIGEST_TYPE    sha512
OPEN_PORTS          tcp/22
FW_ACCESS_TIMEOUT   2

SOURCE              ANY
KEY                 fwknoptest
HMAC_KEY            hmactest
OPEN_PORTS          tcp/22
FW_ACCESS_TIMEOUT   2
`)
	r.start()
	// The ready line says where fwknop clients knock (spa_port is postern's own).
	r.out.WaitAfter(t, 0, time.Second, "msg=ready", "fwknop_port=62201", "fwknop_stanzas=3")
	srv, cli := r.p.Server4, r.p.Client4
	base := []string{"-A", "tcp/22", "-a", cli.String(), "-D", srv.String()}
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"HMAC-SHA256, base64 keys", []string{"--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac"}},
		{"HMAC-SHA512, SHA3-256 digest", []string{"--key-base64-rijndael", fwKey2, "--key-base64-hmac", fwHMAC2, "--use-hmac",
			"--hmac-digest-type", "sha512", "-m", "sha3_256"}},
		{"passphrase KEY", []string{"--key-rijndael", "fwknoptest", "--key-hmac", "hmactest", "--use-hmac"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.requireClosed(cli, srv, "before the knock")
			mark := r.out.Mark()
			r.fwknop(append(base, tt.args...)...)
			r.waitOpen(cli, srv, time.Second, "after fwknop").Close()
			r.out.WaitAfter(t, mark, time.Second, `msg=granted language=fwknop`, "allow="+cli.String(), "ports=tcp/22", "duration=2s")
			r.requireClosed(r.p.Client4b, srv, "another address")
			r.waitClosed(cli, srv, 3*time.Second, "after FW_ACCESS_TIMEOUT")
		})
	}
	if n := strings.Count(r.out.String(), "msg=refused language=fwknop"); n != 0 {
		t.Fatalf("%d refusals while trying stanzas (one packet, one log line):\n%s", n, r.out)
	}
}

func TestFwknopReplayAgeTamperPolicy(t *testing.T) {
	t.Parallel()
	r := fwknopRig(t, `SOURCE              ANY
KEY_BASE64          `+fwKey+`
HMAC_KEY_BASE64     `+fwHMAC+`
OPEN_PORTS          tcp/22, tcp/23
RESTRICT_PORTS      tcp/23
FW_ACCESS_TIMEOUT   1
`)
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	keys := []string{"--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac"}
	knock := func(extra ...string) {
		r.fwknop(append(append([]string{"-a", cli.String(), "-D", srv.String()}, keys...), extra...)...)
	}
	sniffed := r.sniff()
	knock("-A", "tcp/22")
	pkt := <-sniffed
	r.waitOpen(cli, srv, time.Second, "the original packet").Close()
	r.waitClosed(cli, srv, 3*time.Second, "expiry")

	refused := func(t *testing.T, reason string, send func()) {
		t.Helper()
		mark := r.out.Mark()
		send()
		r.out.WaitAfter(t, mark, 2*time.Second, `msg=refused language=fwknop`, reasonField(reason))
		r.requireClosed(cli, srv, reason)
	}
	t.Run("replay from the client", func(t *testing.T) {
		refused(t, "replay", func() { r.sendRaw(cli, srv, pkt) })
	})
	t.Run("replay from another address", func(t *testing.T) {
		refused(t, "replay", func() { r.sendRaw(r.p.Client4b, srv, pkt) })
	})
	t.Run("5 minutes old", func(t *testing.T) {
		refused(t, "stale timestamp", func() { knock("-A", "tcp/22", "--time-offset-minus", "300") })
	})
	t.Run("one character changed", func(t *testing.T) {
		bad := []byte(string(pkt))
		bad[50] = map[bool]byte{true: 'A', false: 'B'}[bad[50] != 'A']
		refused(t, "no matching stanza", func() { r.sendRaw(cli, srv, bad) })
	})
	t.Run("two low bits of the last character changed", func(t *testing.T) {
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
		bad := []byte(string(pkt))
		i := strings.IndexByte(alphabet, bad[len(bad)-1])
		bad[len(bad)-1] = alphabet[i^3]
		refused(t, "no matching stanza", func() { r.sendRaw(cli, srv, bad) })
	})
	t.Run("port in RESTRICT_PORTS", func(t *testing.T) {
		refused(t, "port not allowed", func() { knock("-A", "tcp/23") })
	})
	t.Run("port outside OPEN_PORTS", func(t *testing.T) {
		refused(t, "port not allowed", func() { knock("-A", "tcp/80") })
	})
	t.Run("replay after a restart", func(t *testing.T) {
		r.signal(syscall.SIGTERM)
		r.start()
		refused(t, "replay", func() { r.sendRaw(cli, srv, pkt) })
	})
	if strings.Contains(r.out.String()[strings.Index(r.out.String(), "msg=granted language=fwknop")+1:], "msg=granted language=fwknop") {
		t.Fatal("something besides the first packet was granted")
	}
}

// postern fwknop knocks a real fwknopd, which opens the port with iptables.
func TestPosternFwknopKnocksRealFwknopd(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "fwknopd", "iptables")
	r := newRig(t, rigOptions{noSPA: true})
	r.dropByDefault()
	run := filepath.Join(r.dir, "run")
	os.MkdirAll(run, 0o700)
	conf := r.writeFile("fwknopd.conf", fmt.Sprintf("PCAP_INTF %s;\nFWKNOP_RUN_DIR %s;\nENABLE_IPT_FORWARDING N;\n", netnstest.Interface, run))
	access := r.writeFile("access.conf", "SOURCE ANY\nKEY_BASE64 "+fwKey+"\nHMAC_KEY_BASE64 "+fwHMAC+"\nOPEN_PORTS tcp/22\nFW_ACCESS_TIMEOUT 30\n")
	fd := r.p.Server.Command(t.Context(), "fwknopd", "-f", "-v", "-c", conf, "-a", access, "-i", netnstest.Interface,
		"-d", filepath.Join(run, "digest.cache"), "-p", filepath.Join(run, "fwknopd.pid"), "-r", run)
	out := netnstest.NewOutput()
	fd.Stdout, fd.Stderr = out, out
	if err := fd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Process.Signal(syscall.SIGTERM); fd.Wait() })
	out.WaitFor(t, 10*time.Second, "Sniffing interface")
	srv, cli := r.p.Server4, r.p.Client4
	r.requireClosed(cli, srv, "before the knock")
	if o, err := r.postern("fwknop", "-A", "tcp/22", "-a", cli.String(), "-D", srv.String(), "--key-base64-rijndael", fwKey,
		"--key-base64-hmac", fwHMAC, "--use-hmac", "--no-rc-file"); err != nil {
		t.Fatalf("postern fwknop: %v\n%s", err, o)
	}
	out.WaitFor(t, 3*time.Second, "Added access rule")
	r.waitOpen(cli, srv, 2*time.Second, "fwknopd opened the port").Close()
	r.requireClosed(r.p.Client4b, srv, "another address")
}

// GnuPG, as in the fwknop walkthrough: the client encrypts to the server's
// key and signs with its own; keys are made in temporary GNUPGHOMEs.
func TestFwknopGPG(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "gpg", "fwknop")
	dir := t.TempDir()
	srvHome, cliHome := filepath.Join(dir, "server-gnupg"), filepath.Join(dir, "client-gnupg")
	srvFpr := gpgKey(t, srvHome, "postern server <server@postern.test>")
	cliFpr := gpgKey(t, cliHome, "postern client <client@postern.test>")
	strangerFpr := gpgKey(t, filepath.Join(dir, "stranger-gnupg"), "stranger <stranger@postern.test>")
	untrustedHome := filepath.Join(dir, "untrusted-gnupg")
	untrustedFpr := gpgKey(t, untrustedHome, "untrusted <untrusted@postern.test>")
	gpgExchange(t, srvHome, cliHome, srvFpr)
	gpgExchange(t, cliHome, srvHome, cliFpr)
	gpgTrust(t, srvHome, cliFpr)
	// Listed as a signer, imported, but never certified: gpg does not hold
	// the key valid, so its signature is a bad one (as fwknopd/gpgme).
	gpgExchange(t, untrustedHome, srvHome, untrustedFpr)
	gpgExchange(t, srvHome, untrustedHome, srvFpr)
	gpgExchange(t, filepath.Join(dir, "stranger-gnupg"), srvHome, strangerFpr)
	gpgExchange(t, srvHome, filepath.Join(dir, "stranger-gnupg"), srvFpr)

	r := fwknopRig(t, fmt.Sprintf(`SOURCE            ANY
GPG_HOME_DIR      %s
GPG_DECRYPT_ID    %s
GPG_ALLOW_NO_PW   Y
GPG_REQUIRE_SIG   Y
GPG_REMOTE_ID     %s, %s
OPEN_PORTS        tcp/22
FW_ACCESS_TIMEOUT 2
`, srvHome, srvFpr, cliFpr[len(cliFpr)-16:], untrustedFpr[len(untrustedFpr)-16:]))
	r.start()
	srv, cli := r.p.Server4, r.p.Client4
	gpgArgs := func(home, signer string) []string {
		return []string{"-A", "tcp/22", "-a", cli.String(), "-D", srv.String(), "--gpg-recipient-key", srvFpr,
			"--gpg-signer-key", signer, "--gpg-home-dir", home, "--gpg-no-signing-pw"}
	}
	t.Run("real fwknop client", func(t *testing.T) {
		r.fwknop(gpgArgs(cliHome, cliFpr)...)
		r.waitOpen(cli, srv, 2*time.Second, "GnuPG knock from fwknop").Close()
		r.waitClosed(cli, srv, 3*time.Second, "expiry")
	})
	t.Run("postern fwknop client", func(t *testing.T) {
		if o, err := r.postern(append([]string{"fwknop", "--no-rc-file"}, gpgArgs(cliHome, cliFpr)...)...); err != nil {
			t.Fatalf("postern fwknop: %v\n%s", err, o)
		}
		r.waitOpen(cli, srv, 2*time.Second, "GnuPG knock from postern").Close()
		r.waitClosed(cli, srv, 3*time.Second, "expiry")
	})
	t.Run("signed by a key not in GPG_REMOTE_ID", func(t *testing.T) {
		mark := r.out.Mark()
		r.fwknop(gpgArgs(filepath.Join(dir, "stranger-gnupg"), strangerFpr)...)
		r.out.WaitAfter(t, mark, 3*time.Second, `msg=refused language=fwknop`, `reason="signature refused"`, "why=")
		r.requireClosed(cli, srv, "stranger's signature")
	})
	t.Run("good signature from a listed key gpg does not hold valid", func(t *testing.T) {
		mark := r.out.Mark()
		r.fwknop(gpgArgs(untrustedHome, untrustedFpr)...)
		r.out.WaitAfter(t, mark, 3*time.Second, `msg=refused language=fwknop`, `reason="signature refused"`,
			`why="the signing key is not fully valid in the keyring`)
		r.requireClosed(cli, srv, "untrusted signer")
	})
}

// gpgKey makes an RSA key (fwknop needs RSA: its wire format assumes an
// old-format public-key packet) without a passphrase and returns its
// fingerprint.
func gpgKey(t *testing.T, home, uid string) string {
	t.Helper()
	os.MkdirAll(home, 0o700)
	if out, err := exec.Command("gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key", uid,
		"rsa2048", "sign,encr", "never").CombinedOutput(); err != nil {
		t.Fatalf("gpg --quick-gen-key: %v\n%s", err, out)
	}
	out, err := exec.Command("gpg", "--homedir", home, "--list-keys", "--with-colons").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Split(line, ":"); f[0] == "fpr" && len(f) > 9 {
			return f[9]
		}
	}
	t.Fatal("no fingerprint")
	return ""
}

// gpgExchange imports from's public key fpr into to.
func gpgExchange(t *testing.T, from, to, fpr string) {
	t.Helper()
	pub, err := exec.Command("gpg", "--homedir", from, "--export", fpr).Output()
	if err != nil {
		t.Fatal(err)
	}
	imp := exec.Command("gpg", "--homedir", to, "--batch", "--import")
	imp.Stdin = strings.NewReader(string(pub))
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("gpg --import: %v\n%s", err, out)
	}
	gpgCheckTrustDB(t, to)
}

// gpgCheckTrustDB brings home's trust database up to date after a change
// to its keys: otherwise the first gpg that verifies does it, and two at
// once (postern's and fwknopd's, sharing the home) may find it locked and
// judge a certified key not valid yet.
func gpgCheckTrustDB(t *testing.T, home string) {
	t.Helper()
	if out, err := exec.Command("gpg", "--homedir", home, "--batch", "--check-trustdb").CombinedOutput(); err != nil {
		t.Fatalf("gpg --check-trustdb: %v\n%s", err, out)
	}
}

// gpgTrust certifies fpr in home's keyring with home's own key (a local
// signature, as the fwknop walkthrough has users do), so gpg holds it
// valid: an imported key alone is not.
func gpgTrust(t *testing.T, home, fpr string) {
	t.Helper()
	if out, err := exec.Command("gpg", "--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback",
		"--passphrase", "", "--quick-lsign-key", fpr).CombinedOutput(); err != nil {
		t.Fatalf("gpg --quick-lsign-key: %v\n%s", err, out)
	}
	gpgCheckTrustDB(t, home)
}
