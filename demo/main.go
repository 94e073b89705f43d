// Command demo shows postern's main job end to end on this machine: it
// builds two network namespaces joined by a veth pair, protects a TCP
// service on port 22 in the "server" namespace with the real postern daemon
// and nftables, knocks from the "client" namespace with the real postern
// client, and checks that the port opens for that address only, then closes.
// Everything it creates is removed when it exits. Run it as root:
//
//	go run ./demo
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/postern/postern/internal/netnstest"
)

// demoT lets the demo use the namespace helper the tests use.
type demoT struct{ cleanups []func() }

func (d *demoT) Helper()          {}
func (d *demoT) Cleanup(f func()) { d.cleanups = append(d.cleanups, f) }
func (d *demoT) Skip(args ...any) { d.Fatalf("%s", fmt.Sprint(args...)) }
func (d *demoT) Fatalf(f string, a ...any) {
	fmt.Printf("\nFAILED: "+f+"\n", a...)
	d.done()
	os.Exit(1)
}
func (d *demoT) done() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }
func show(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }

// Long on purpose: the demo's script, step by step, as it is printed.
func main() {
	grant := flag.Duration("for", 5*time.Second, "how long the knock opens the port")
	flag.Parse()
	t := &demoT{}
	defer t.done()
	netnstest.Require(t, "nft")

	dir, err := os.MkdirTemp("", "postern-demo")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "postern")
	step("building postern (static binary)")
	build := exec.Command("go", "build", "-o", bin, "./cmd/postern")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	step("two network namespaces joined by a veth pair")
	p := netnstest.NewPair(t)
	show("server %-24s %v, %v", p.Server.Name, p.Server4, p.Server6)
	show("client %-24s %v (and %v)", p.Client.Name, p.Client4, p.Client4b)

	step("a service on tcp/22 in the server namespace (an echo server standing in for SSH)")
	p.Server.Echo(t, "[::]:22")
	probe(t, p, p.Client4, true, "without postern the port is open to everyone")

	step("keys: postern genkey --server, postern genkey, postern pubkey")
	serverKey := run(t, bin, "", "genkey", "--server")
	clientKey := run(t, bin, "", "genkey")
	serverPub := run(t, bin, serverKey, "pubkey")
	clientPub := run(t, bin, clientKey, "pubkey")
	write(t, filepath.Join(dir, "server.key"), serverKey)
	write(t, filepath.Join(dir, "client.key"), clientKey)
	show("server public key %s", serverPub)
	show("client public key %s", clientPub)

	cfg := fmt.Sprintf(`interface = %q
private_key_file = %q
state_dir = %q

[spa]
port = 62201

[[client]]
name = "demo-laptop"
public_key = %q
allow = ["tcp/22"]
max_duration = "5m"
default_duration = "30s"
`, netnstest.Interface, filepath.Join(dir, "server.key"), filepath.Join(dir, "state"), clientPub)
	cfgPath := filepath.Join(dir, "postern.toml")
	write(t, cfgPath, cfg)
	step("configuration %s", cfgPath)
	for _, line := range strings.Split(strings.TrimSpace(cfg), "\n") {
		show("%s", line)
	}

	step("postern server -c postern.toml   (in the server namespace)")
	log := netnstest.NewOutput()
	daemon := p.Server.Command(context.Background(), bin, "server", "-c", cfgPath)
	daemon.Stdout, daemon.Stderr = log, log
	if err := daemon.Start(); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		daemon.Process.Kill()
		daemon.Wait()
		exec.Command("ip", "netns", "exec", p.Server.Name, bin, "cleanup").Run()
	})
	show("daemon: %s", log.WaitFor(t, 10*time.Second, "msg=ready"))
	show("nftables in the server namespace now holds table inet postern:")
	for _, line := range strings.Split(strings.TrimSpace(p.Server.Exec(t, "nft", "list", "chain", "inet", "postern", "input")), "\n") {
		show("  %s", line)
	}
	probe(t, p, p.Client4, false, "before the knock the port is closed")

	step("postern knock --key client.key --server-key %s --open tcp/22 --for %v %v", serverPub, *grant, p.Server4)
	mark := log.Mark()
	out := run(t, "ip", "", "netns", "exec", p.Client.Name, bin, "knock", "-v", "--key", filepath.Join(dir, "client.key"),
		"--server-key", serverPub, "--open", "tcp/22", "--for", grant.String(), p.Server4.String())
	knocked := time.Now()
	show("client: %s", out)
	show("daemon: %s", log.WaitAfter(t, mark, 2*time.Second, "msg=granted"))
	opened := waitOpen(t, p, p.Client4)
	show("tcp/22 reachable from %v %v after the knock", p.Client4, opened.Round(100*time.Microsecond))
	probe(t, p, p.Client4b, false, "the client's other address is still shut out")
	show("postern status (in the server namespace):")
	for _, line := range strings.Split(run(t, "ip", "", "netns", "exec", p.Server.Name, bin, "status"), "\n") {
		show("  %s", line)
	}

	step("waiting for the grant to expire (the kernel removes it, not the daemon)")
	time.Sleep(time.Until(knocked.Add(*grant + 200*time.Millisecond)))
	probe(t, p, p.Client4, false, "after %v the port is closed again", *grant)

	step("done: removing the daemon, table inet postern and the namespaces")
	t.done()
	fmt.Println("\ndemo passed")
}

func run(t *demoT, name, stdin string, args ...string) string {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func write(t *demoT, path, text string) {
	if err := os.WriteFile(path, []byte(text+"\n"), 0o600); err != nil {
		t.Fatalf("%v", err)
	}
}

// probe connects to the server's port 22 from an address of the client and
// checks the outcome: a closed port drops the SYN, so closed means a timeout.
func probe(t *demoT, p *netnstest.Pair, from netip.Addr, wantOpen bool, what string, args ...any) {
	c, err := p.Client.Dial("tcp", from, netip.AddrPortFrom(p.Server4, 22), 500*time.Millisecond)
	open := err == nil
	if open {
		c.Close()
	}
	result := "connected"
	if !open {
		result = "timed out"
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			result = err.Error()
		}
	}
	desc := fmt.Sprintf(what, args...)
	if open != wantOpen {
		t.Fatalf("%s: connect %v → %v:22 %s", desc, from, p.Server4, result)
	}
	show("ok: %s (connect %v → %v:22 %s)", desc, from, p.Server4, result)
}

func waitOpen(t *demoT, p *netnstest.Pair, from netip.Addr) time.Duration {
	start := time.Now()
	for time.Since(start) < time.Second {
		if c, err := p.Client.Dial("tcp", from, netip.AddrPortFrom(p.Server4, 22), 20*time.Millisecond); err == nil {
			c.Close()
			return time.Since(start)
		}
	}
	t.Fatalf("the knock did not open tcp/22 within 1s")
	return 0
}
