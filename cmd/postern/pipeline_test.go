package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/netnstest"
)

// One language's slow work never stalls another's: while gpg (a stand-in
// that takes 5 s) works on an fwknop GnuPG packet, a postern SPA knock and
// a door sequence from other sources open their ports within a second.
func TestSlowGnuPGStallsNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	started := filepath.Join(dir, "gpg-started")
	slowGPG := filepath.Join(dir, "slow-gpg")
	os.WriteFile(slowGPG, []byte("#!/bin/sh\ntouch "+started+"\nsleep 5\nexit 2\n"), 0o755)
	access := filepath.Join(dir, "access.conf")
	os.WriteFile(access, []byte(fmt.Sprintf(`SOURCE            ANY
GPG_DECRYPT_ID    0123456789ABCDEF
GPG_ALLOW_NO_PW   Y
GPG_DISABLE_SIG   Y
GPG_EXE           %s
OPEN_PORTS        tcp/22
`, slowGPG)), 0o644)
	r := newRig(t, rigOptions{extra: fmt.Sprintf(`
[fwknop]
access_file = %q

[[door]]
name = "seq"
sequence = ["tcp/7000", "tcp/8000"]
seq_timeout = "5s"
open = ["tcp/22"]
duration = "5s"
`, access)})
	r.start()
	// GnuPG by length, as fwknopd decides; with the "hQ" that fwknop strips
	// put back, a whole number of base64 quanta (decoding is strict).
	junk := base64.RawStdEncoding.EncodeToString(randomBytes(901))
	r.sendRaw(r.p.Client6, r.p.Server6, []byte(junk))
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stand-in gpg never ran\n%s", r.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	r.knock(r.p.Server4)
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "SPA knock while gpg works").Close()
	for _, p := range []uint16{7000, 8000} {
		r.p.Client.Dial("tcp", r.p.Client4b, netip.AddrPortFrom(r.p.Server4, p), 50*time.Millisecond)
	}
	r.waitOpen(r.p.Client4b, r.p.Server4, time.Second, "door sequence while gpg works").Close()
	if since := time.Since(start); since > 4*time.Second {
		t.Fatalf("knocks took %v: they waited for gpg", since)
	}
	r.out.WaitFor(t, 10*time.Second, "msg=refused language=fwknop", `reason="no matching stanza"`)
}

// SIGTERM with on_exit = "remove" during a stream of knocks: when the
// daemon has exited, no grant is left in the kernel (no knock was granted
// after the grants were removed).
func TestRemoveOnExitDuringKnockStream(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{extra: "\n[firewall]\non_exit = \"remove\"\n"})
	r.start()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				r.p.Client.Command(ctx, posternBin, "knock", "--key", r.alice, "--server-key", r.server.Public().String(),
					"--open", "tcp/22", "--for", "30s", r.p.Server4.String()).Run()
			}
		}()
	}
	r.out.WaitFor(t, 3*time.Second, "msg=granted")
	time.Sleep(300 * time.Millisecond)
	r.signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond) // knocks keep coming after the exit
	cancel()
	wg.Wait()
	if set := r.p.Server.Exec(t, "nft", "list", "set", "inet", "postern", "grants4"); strings.Contains(set, "elements") {
		t.Fatalf("grants left after exit with on_exit = remove:\n%s\n%s", set, r.out)
	}
	r.requireClosed(r.p.Client4, r.p.Server4, "after exit with on_exit = remove")
	_ = netnstest.Interface
}

// Reloads every 30 ms (SIGHUP) while knocks stream, then SIGTERM with
// on_exit = "remove": the daemon exits cleanly — a SIGHUP during the exit
// does not kill it — and no grant is left in the kernel: no pipeline a
// reload replaced granted anything after the grants were removed.
func TestReloadStormDuringShutdown(t *testing.T) {
	t.Parallel()
	for round := range 3 {
		r := newRig(t, rigOptions{extra: "\n[firewall]\non_exit = \"remove\"\n"})
		r.start()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() {
			for ctx.Err() == nil {
				r.p.Client.Command(ctx, posternBin, "knock", "--key", r.alice, "--server-key", r.server.Public().String(),
					"--open", "tcp/22", "--for", "30s", r.p.Server4.String()).Run()
			}
		})
		pid := r.daemon.Process.Pid
		wg.Go(func() {
			tick := time.NewTicker(30 * time.Millisecond)
			defer tick.Stop()
			for ctx.Err() == nil {
				syscall.Kill(pid, syscall.SIGHUP) // also after the daemon is gone: ESRCH, no matter
				<-tick.C
			}
		})
		r.out.WaitFor(t, 3*time.Second, "msg=granted")
		r.out.WaitFor(t, 3*time.Second, "msg=reloaded")
		r.daemon.Process.Signal(syscall.SIGTERM)
		var err error
		select {
		case err = <-r.exited:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the daemon did not exit", round)
		}
		r.daemon = nil
		cancel()
		wg.Wait()
		if err != nil {
			t.Fatalf("round %d: the daemon exited with %v during a reload storm\n%s", round, err, r.out)
		}
		if !strings.Contains(r.out.String(), "msg=stopped") {
			t.Fatalf("round %d: no clean stop\n%s", round, r.out)
		}
		if set := r.p.Server.Exec(t, "nft", "list", "set", "inet", "postern", "grants4"); strings.Contains(set, "elements") {
			t.Fatalf("round %d: grants left after exit with on_exit = remove:\n%s", round, set)
		}
	}
}
