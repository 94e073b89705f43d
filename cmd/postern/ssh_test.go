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

// Knocks signed by OpenSSH identities, made with the real ssh-keygen,
// ssh-agent and ssh-add.

// sshKeygen makes an ed25519 key without a passphrase and returns its
// public line.
func sshKeygen(t *testing.T, path, comment string) string {
	t.Helper()
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(pub))
}

// sshAgent starts an ssh-agent on a socket in dir and returns its
// environment entry.
func sshAgent(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return "SSH_AUTH_SOCK=" + sock
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// knockSSH knocks from the client namespace with extra flags (--ssh-key or
// --ssh-agent=…) and returns the client's error and output.
func (r *rig) knockSSH(env []string, args ...string) (string, error) {
	args = append([]string{"knock", "--server-key", r.server.Public().String(), "--open", "tcp/22"}, args...)
	cmd := r.p.Client.Command(context.Background(), posternBin, append(args, r.p.Server4.String())...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A knock signed through a real ssh-agent (the key file deleted after
// ssh-add) opens the door for a server whose authorized_keys lists it; a
// key not listed, and a listed key whose from= excludes the source, are
// refused with their reasons.
func TestSSHAgentKnock(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "ssh-keygen", "ssh-agent", "ssh-add")
	dir := t.TempDir()
	alice := sshKeygen(t, filepath.Join(dir, "alice"), "alice@laptop")
	sshKeygen(t, filepath.Join(dir, "stranger"), "stranger@laptop")
	faraway := sshKeygen(t, filepath.Join(dir, "faraway"), "faraway@laptop")
	keys := filepath.Join(dir, "authorized_keys")
	os.WriteFile(keys, []byte("postern-allow=\"tcp/22\" "+alice+"\n"+
		"from=\"203.0.113.0/24\",postern-allow=\"tcp/22\" "+faraway+"\n"), 0o600)
	r := newRig(t, rigOptions{extra: fmt.Sprintf("\n[ssh]\nauthorized_keys = %q\n", keys)})
	r.start()
	env := []string{sshAgent(t, dir)}
	for _, k := range []string{"alice", "stranger", "faraway"} {
		add := exec.Command("ssh-add", filepath.Join(dir, k))
		add.Env = append(os.Environ(), env...)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v\n%s", err, out)
		}
		os.Remove(filepath.Join(dir, k)) // the private key lives on in the agent only
	}
	if out, err := r.knockSSH(env, "--ssh-agent=alice@laptop"); err != nil {
		t.Fatalf("knock through ssh-agent: %v\n%s", err, out)
	}
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "after the agent-signed knock").Close()
	r.out.WaitFor(t, time.Second, "msg=granted language=spa", "client=ssh:alice@laptop")
	for _, tt := range []struct{ key, reason string }{{"stranger@laptop", "unknown client"}, {"faraway@laptop", "ssh source not allowed"}} {
		mark := r.out.Mark()
		if out, err := r.knockSSH(env, "--ssh-agent="+tt.key); err != nil {
			t.Fatalf("knock: %v\n%s", err, out)
		}
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", reasonField(tt.reason))
	}
	r.requireClosed(r.p.Client4b, r.p.Server4, "another address")
}

// A fleet with an SSH CA: three servers trust one CA and list no client
// key; a certificate for principal ops opens tcp/22 on all three. An
// expired certificate, one for another principal, one whose source-address
// excludes the client and a revoked one are refused, each with its reason.
// A replayed SSH knock is refused, also after a restart.
func TestSSHCertificateFleet(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "ssh-keygen")
	dir := t.TempDir()
	ca := sshKeygen(t, filepath.Join(dir, "ca"), "fleet-ca")
	caFile := filepath.Join(dir, "ca.pub")
	os.WriteFile(caFile, []byte(ca+"\n"), 0o644)
	revoked := filepath.Join(dir, "revoked-keys")
	os.WriteFile(revoked, []byte("# revoked certificates\nserial 4\n"), 0o600)
	cert := func(name string, serial int, extra ...string) string {
		t.Helper()
		key := filepath.Join(dir, name)
		sshKeygen(t, key, name)
		args := append([]string{"-q", "-s", filepath.Join(dir, "ca"), "-I", name, "-z", fmt.Sprint(serial)}, extra...)
		if out, err := exec.Command("ssh-keygen", append(args, key+".pub")...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
		}
		return key
	}
	good := cert("ops-alice", 1, "-n", "ops", "-V", "-5m:+1h")
	ssh := fmt.Sprintf("\n[ssh]\ntrusted_user_ca_keys = %q\nrevoked_keys = %q\n[[ssh.principal]]\nname = \"ops\"\nallow = [\"tcp/22\"]\n",
		caFile, revoked)
	var rigs []*rig
	for range 3 {
		r := newRig(t, rigOptions{extra: ssh})
		r.start()
		rigs = append(rigs, r)
	}
	for i, r := range rigs {
		if out, err := r.knockSSH(nil, "--ssh-key", good); err != nil {
			t.Fatalf("server %d: %v\n%s", i, err, out)
		}
		r.waitOpen(r.p.Client4, r.p.Server4, time.Second, fmt.Sprintf("server %d after the certificate knock", i)).Close()
		r.out.WaitFor(t, time.Second, "msg=granted", "client=principal:ops")
	}
	r := rigs[0]
	for _, tt := range []struct{ name, reason string }{
		{cert("expired", 2, "-n", "ops", "-V", "-2h:-1h"), "ssh certificate invalid"},
		{cert("web", 3, "-n", "web", "-V", "-5m:+1h"), "ssh principal not allowed"},
		{cert("revoked", 4, "-n", "ops", "-V", "-5m:+1h"), "ssh key revoked"},
		{cert("elsewhere", 5, "-n", "ops", "-V", "-5m:+1h", "-O", "source-address=203.0.113.0/24"), "ssh source not allowed"},
	} {
		mark := r.out.Mark()
		if out, err := r.knockSSH(nil, "--ssh-key", tt.name); err != nil {
			t.Fatalf("knock: %v\n%s", err, out)
		}
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", reasonField(tt.reason))
	}

	sniffed := r.sniff()
	if out, err := r.knockSSH(nil, "--ssh-key", good); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	pkt := <-sniffed
	r.out.WaitFor(t, 2*time.Second, "msg=granted")
	for _, restart := range []bool{false, true} {
		if restart {
			r.signal(syscall.SIGTERM)
			r.start()
		}
		mark := r.out.Mark()
		r.sendRaw(r.p.Client4b, r.p.Server4, pkt)
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", "reason=replay")
	}

	// Revoking the good certificate takes effect on reload.
	os.WriteFile(revoked, []byte("serial 4\nserial 1\n"), 0o600)
	mark := r.out.Mark()
	r.daemon.Process.Signal(syscall.SIGHUP)
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=reloaded")
	if out, err := r.knockSSH(nil, "--ssh-key", good); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", `reason="ssh key revoked"`)
}

// authorized_keys and CA options mean what sshd means, and revoked_keys
// reads OpenSSH's binary KRL — every file made by the real ssh-keygen.
func TestSSHOptionsAsSSHDMeansThem(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "ssh-keygen")
	dir := t.TempDir()
	keygen := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
		}
	}
	old := sshKeygen(t, filepath.Join(dir, "old"), "old@laptop")
	near := sshKeygen(t, filepath.Join(dir, "near"), "near@laptop")
	ca1 := sshKeygen(t, filepath.Join(dir, "ca1"), "ca1")
	ca2 := sshKeygen(t, filepath.Join(dir, "ca2"), "ca2")
	keys := filepath.Join(dir, "authorized_keys")
	os.WriteFile(keys, []byte(`expiry-time="20200101",no-pty `+old+"\n"+`from="198.18.0.0/24" `+near+"\n"), 0o600)
	cas := filepath.Join(dir, "cas")
	os.WriteFile(cas, []byte(`cert-authority,principals="ops" `+ca1+"\n"+ca2+"\n"), 0o644)
	cert := func(ca, name string, serial int, principals string) string {
		t.Helper()
		key := filepath.Join(dir, name)
		sshKeygen(t, key, name)
		keygen("-q", "-s", filepath.Join(dir, ca), "-I", name, "-z", fmt.Sprint(serial), "-n", principals, "-V", "-5m:+1h", key+".pub")
		return key
	}
	good := cert("ca1", "good", 1, "ops")
	bySerial := cert("ca1", "by-serial", 7, "ops")
	byID := cert("ca1", "mallory", 8, "ops")
	dbOnly := cert("ca1", "db-only", 9, "db")
	fromCA2 := cert("ca2", "from-ca2", 1, "ops")
	// The KRL: serial 7 and key id "mallory" of ca1, and ca2's own key.
	krl, spec := filepath.Join(dir, "revoked.krl"), filepath.Join(dir, "krl-spec")
	os.WriteFile(spec, []byte("serial: 7\nid: mallory\n"), 0o644)
	keygen("-q", "-k", "-f", krl, "-s", filepath.Join(dir, "ca1.pub"), spec)
	keygen("-q", "-k", "-u", "-f", krl, filepath.Join(dir, "ca2.pub"))
	ssh := fmt.Sprintf("\n[ssh]\nauthorized_keys = %q\ntrusted_user_ca_keys = %q\nrevoked_keys = %q\nallow = [\"tcp/22\"]\n"+
		"[[ssh.principal]]\nname = \"ops\"\nallow = [\"tcp/22\"]\n[[ssh.principal]]\nname = \"db\"\nallow = [\"tcp/22\"]\n", keys, cas, krl)
	r := newRig(t, rigOptions{extra: ssh})
	r.start()
	if out, err := r.knockSSH(nil, "--ssh-key", good); err != nil {
		t.Fatalf("knock: %v\n%s", err, out)
	}
	r.out.WaitFor(t, 2*time.Second, "msg=granted", "client=principal:ops")
	for _, tt := range []struct {
		name, reason string
		extra        []string
	}{
		{filepath.Join(dir, "old"), "ssh key expired", nil},
		{filepath.Join(dir, "near"), "ssh source not allowed", []string{"--allow", "203.0.113.9"}},
		{bySerial, "ssh key revoked", nil},
		{byID, "ssh key revoked", nil},
		{dbOnly, "ssh principal not allowed", nil},
		{fromCA2, "ssh key revoked", nil},
	} {
		mark := r.out.Mark()
		if out, err := r.knockSSH(nil, append([]string{"--ssh-key", tt.name}, tt.extra...)...); err != nil {
			t.Fatalf("knock: %v\n%s", err, out)
		}
		r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused", reasonField(tt.reason))
	}
	// from= allows the source and the address asked for: granted.
	if out, err := r.knockSSH(nil, "--ssh-key", filepath.Join(dir, "near")); err != nil {
		t.Fatalf("knock: %v\n%s", err, out)
	}
	r.out.WaitFor(t, 2*time.Second, "msg=granted", "client=ssh:near@laptop")

	// An option sshd does not know is a configuration error naming the
	// file and line, not ignored.
	os.WriteFile(keys, []byte(near+"\n"+`frobnicate,from="198.18.0.0/24" `+old+"\n"), 0o600)
	out, err := exec.Command(posternBin, "check-config", "-c", r.cfgPath).CombinedOutput()
	if err == nil || !strings.Contains(string(out), keys+":2") || !strings.Contains(string(out), "frobnicate") {
		t.Fatalf("check-config with an unknown option: %v\n%s", err, out)
	}
}
