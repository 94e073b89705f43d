// Command postern is the postern daemon and client in one binary.
//
// The subcommands and their flags are an interface that scripts and tests
// outside the project drive; change them only compatibly.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/config"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/port"
	"github.com/postern/postern/spa"
)

// errUsage marks errors that deserve exit status 2.
type errUsage struct{ error }

func main() {
	err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	var u errUsage
	switch {
	case err == nil:
	case errors.As(err, &u):
		fmt.Fprintln(os.Stderr, "postern:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "postern:", err)
		if hint := permissionHint(err, os.Geteuid()); hint != "" {
			fmt.Fprintln(os.Stderr, "postern: hint:", hint)
		}
		os.Exit(1)
	}
}

// permissionHint says what a permission error most likely means when not
// running as root ("" otherwise).
func permissionHint(err error, euid int) string {
	if runtime.GOOS != "linux" || euid == 0 {
		return ""
	}
	msg := err.Error()
	if !errors.Is(err, fs.ErrPermission) && !strings.Contains(msg, "operation not permitted") && !strings.Contains(msg, "permission denied") {
		return ""
	}
	return "this needs root, or the capabilities CAP_NET_ADMIN (the firewall) and CAP_NET_RAW (packet capture) — " +
		"run it with sudo, or as the packaged postern.service does"
}

// run runs one command line; the command tree is in cli.go.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	root := newRoot()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err != nil && strings.HasPrefix(err.Error(), "unknown command") {
		return errUsage{err}
	}
	return err
}

// genkey prints a new private key or, with out, writes it to a new file
// only its owner can read (created so from the start: no moment in which
// it is readable) and prints the public key to hand out.
func genkey(srv, pq bool, out string, stdout io.Writer) error {
	var text, public string
	if pq && !srv {
		return errUsage{errors.New("--pq goes with --server")}
	}
	if srv {
		gen := spa.GenerateServerKey
		if pq {
			gen = spa.GenerateXWingServerKey
		}
		k, err := gen()
		if err != nil {
			return err
		}
		text, public = k.Encode(), k.Public().String()
	} else {
		k, err := spa.GenerateClientKey()
		if err != nil {
			return err
		}
		text, public = k.Encode(), k.Public().String()
	}
	if out == "" {
		_, err := fmt.Fprintln(stdout, text)
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists: not overwriting a key (remove it first if you mean to replace it)", out)
	}
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, text); err != nil {
		f.Close()
		os.Remove(out)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(out)
		return err
	}
	_, err = fmt.Fprintln(stdout, public)
	return err
}

// token prints the pre-authentication key of a [[client]] of the
// configuration at path.
func token(path, who string, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	var pub spa.ClientPublicKey
	found := false
	for _, c := range cfg.Clients {
		if c.Name == who || c.PublicKey.String() == who {
			pub, found = c.PublicKey, true
		}
	}
	if !found {
		return fmt.Errorf("%s: no [[client]] named %q or with that public key", path, who)
	}
	text, err := spa.ReadPrivateKeyFile(cfg.PrivateKeyFile)
	if err != nil {
		return err
	}
	srv, err := spa.ParseServerPrivateKey(text)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.PrivateKeyFile, err)
	}
	_, err = fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(spa.TokenKey(srv, pub)))
	return err
}

// parseTokenKey reads --token-key / token_key: postern token's output.
func parseTokenKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(k) != 32 {
		return nil, errors.New("token key: want the 44-character output of postern token on the server")
	}
	return k, nil
}

func pubkey(stdin io.Reader, stdout io.Writer) error {
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if strings.TrimSpace(line) == "" {
		return errUsage{errors.New("no key on standard input: postern pubkey < KEYFILE")}
	}
	pub, err := spa.PublicKeyOf(line)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, pub)
	return err
}

const defaultConfig = "/etc/postern/postern.toml"

func checkConfig(path string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if cfg.SPAEnabled() {
		text, err := spa.ReadPrivateKeyFile(cfg.PrivateKeyFile)
		if err != nil {
			return fmt.Errorf("%s: private_key_file: %w", cfg.Path, err)
		}
		if _, err := spa.ParseServerPrivateKey(text); err != nil {
			return fmt.Errorf("%s: private_key_file %s: %w", cfg.Path, cfg.PrivateKeyFile, err)
		}
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if cfg.Capture == "afpacket" && cfg.Interface != "any" {
		for _, name := range cfg.Interfaces {
			if _, err := net.InterfaceByName(name); err != nil {
				fmt.Fprintf(stderr, "%s: warning: interface %q does not exist (yet): the daemon will wait for it\n", cfg.Path, name)
			}
		}
	}
	stanzas := 0
	if cfg.Fwknop != nil {
		stanzas = len(cfg.Fwknop.Stanzas)
	}
	fmt.Fprintf(stdout, "%s: OK: %d clients, %d doors, %d covert doors, %d fwknop stanzas, protected %s\n",
		cfg.Path, len(cfg.Clients), len(cfg.Doors), len(cfg.Covert), stanzas, port.Join(cfg.Protected()))
	if fw := cfg.Forwarded(); len(fw) > 0 || cfg.Gateway.Published || cfg.Fwknop != nil && cfg.Fwknop.NAT.Forwarding {
		var dests []string
		for _, d := range fw {
			dests = append(dests, policy.Forward{To: d.Addr, Port: d.Port}.String())
		}
		fmt.Fprintf(stdout, "gateway: closed on the forward path: %s", cmp.Or(strings.Join(dests, ", "), "none"))
		if cfg.Gateway.Published {
			fmt.Fprint(stdout, "; published ports closed too")
		}
		fmt.Fprintln(stdout)
		if cfg.Fwknop != nil && cfg.Fwknop.NAT.Forwarding {
			fmt.Fprintln(stdout, "gateway: fwknop clients may ask for any host behind this one (-N): list those to keep closed in [gateway] protect")
		}
	}
	return nil
}

// knockFlags are postern knock's flags: SPA, knock(1)'s sequence flags,
// covert, and the ones they share.
type knockFlags struct {
	fs *pflag.FlagSet
	// postern SPA
	keyFile, serverKey, open, allow, profile string
	closePorts                               string
	sshKey, sshAgent                         string
	stun, tokenKey                           string
	stunServers                              []string // from a profile
	dur, offset, wait                        time.Duration
	knockPort                                uint
	bind                                     bool
	// port-knock sequences, knock(1)'s flags
	udp                                      bool
	delayMS, length                          int
	door, secretFile, period, portRange, cfg string
	// covert
	covert    bool
	decoys    int
	decoyFrom string
	// all
	only4, only6, verbose bool
}

// addKnockFlags defines postern knock's flags on fs: GNU long names, and
// knock(1)'s short ones (-u -d -4 -6 -v).
func addKnockFlags(fs *pflag.FlagSet) *knockFlags {
	k := &knockFlags{fs: fs}
	fs.StringVar(&k.keyFile, "key", "", "SPA: client private key `file` (postern genkey)")
	fs.StringVar(&k.serverKey, "server-key", "", "SPA: the server's public `key`, or a file holding it")
	fs.StringVar(&k.sshKey, "ssh-key", "", "SPA: sign with this OpenSSH private key `file` (and FILE-cert.pub if there) instead of --key")
	fs.StringVar(&k.sshAgent, "ssh-agent", "", "SPA: sign with a key held by ssh-agent: --ssh-agent alone for its only key, --ssh-agent=`FINGERPRINT|COMMENT` to choose")
	fs.Lookup("ssh-agent").NoOptDefVal = "*"
	fs.StringVar(&k.open, "open", "", "SPA: what to open: `[HOST:]proto/port[,proto/port…]`, such as tcp/22, or 10.0.0.5:tcp/22 for a host behind a gateway")
	fs.DurationVar(&k.wait, "wait", 0, "SPA: after knocking, wait up to this `long` (default 10s) for the first TCP port to answer, knocking again (fresh) up to twice")
	fs.Lookup("wait").NoOptDefVal = "10s"
	fs.StringVar(&k.closePorts, "close", "", "SPA: close these `proto/port[,…]` for this address now (an authenticated close request) instead of opening")
	fs.DurationVar(&k.dur, "for", 0, "SPA: how long to open it (default: the server's default for this client)")
	fs.StringVar(&k.allow, "allow", "", "SPA: address to open it for: an `address`, \"auto\" for this host's public address as STUN servers see it (behind NAT), or \"source\" for whatever address the server sees (default: this host's address on the route to the server)")
	fs.StringVar(&k.tokenKey, "token-key", "", "SPA: the pre-authentication `key` the server's postern token printed for this client")
	fs.StringVar(&k.stun, "stun", "", "SPA: STUN servers for --allow auto, `host:port[,…]` (default: stun_servers in the client config)")
	fs.UintVar(&k.knockPort, "port", config.DefaultSPAPort, "SPA: the server's knock `port`")
	fs.BoolVar(&k.bind, "bind", false, "SPA: bind the knock to the server address it is sent to")
	fs.DurationVar(&k.offset, "time-offset", 0, "SPA: shift the knock's timestamp by this `duration` (negative: into the past)")
	fs.StringVar(&k.profile, "profile", "", "SPA: knock as the client config's [[spa]] profile `name` says (flags override)")
	fs.BoolVarP(&k.udp, "udp", "u", false, "sequence: ports without :tcp or :udp are UDP")
	fs.IntVarP(&k.delayMS, "delay", "d", 0, "sequence: wait this many `ms` between hits")
	fs.StringVar(&k.door, "door", "", "sequence: knock the door `name`d in the client config, or a rotating door with --secret-file")
	fs.StringVar(&k.secretFile, "secret-file", "", "sequence: the rotating door's shared secret `file`")
	fs.StringVar(&k.period, "period", "", "sequence: the rotating door's period (default 30s)")
	fs.IntVar(&k.length, "length", 0, "sequence: the rotating door's sequence length (default 4)")
	fs.StringVar(&k.portRange, "port-range", "", "sequence: the rotating door's port range (default 20000-39999)")
	fs.StringVar(&k.cfg, "config", "", "client config `file` with [[spa]], [[door]] and [[covert]] profiles (default ~/.config/postern/client.toml)")
	fs.BoolVar(&k.covert, "covert", false, "covert: hide the knock in the header fields of TCP SYNs (needs CAP_NET_RAW)")
	fs.IntVar(&k.decoys, "decoys", 0, "covert: also send this many SYNs with random fields to other ports")
	fs.StringVar(&k.decoyFrom, "decoy-from", "", "covert: other `addresses` of this host to send one decoy SYN each from")
	fs.BoolVarP(&k.only4, "ipv4", "4", false, "use IPv4 only")
	fs.BoolVarP(&k.only6, "ipv6", "6", false, "use IPv6 only")
	fs.BoolVarP(&k.verbose, "verbose", "v", false, "say what is sent")
	return k
}

// network returns "ip", "ip4" or "ip6" (with prefix "udp": "udp4"…) as -4/-6 say.
func (k *knockFlags) network(base string) string {
	switch {
	case k.only4:
		return base + "4"
	case k.only6:
		return base + "6"
	}
	return base
}

func (k *knockFlags) set(name string) bool { return k.fs.Changed(name) }

func (k *knockFlags) run(pos []string, stdout io.Writer) error {
	var err error
	k.cfg = cmp.Or(k.cfg, client.DefaultProfiles())
	if k.only4 && k.only6 {
		return errUsage{errors.New("-4 and -6 exclude each other")}
	}
	var out io.Writer
	if k.verbose {
		out = stdout
	}
	switch {
	case k.covert:
		return k.covertKnock(pos, out)
	case k.profile != "":
		if pos, err = k.applyProfile(pos); err != nil {
			return err
		}
	}
	if k.keyFile == "" && k.sshKey == "" && k.sshAgent == "" && k.serverKey == "" && k.open == "" && k.closePorts == "" {
		return k.sequence(pos, out)
	}
	return k.spaKnock(pos, stdout)
}

// applyProfile fills what the flags left unset from a [[spa]] profile.
func (k *knockFlags) applyProfile(pos []string) ([]string, error) {
	p, err := profileFor(k.cfg, k.profile)
	if err != nil {
		return nil, err
	}
	if k.keyFile == "" && k.sshKey == "" && k.sshAgent == "" {
		k.keyFile, k.sshKey, k.sshAgent = p.KeyFile, p.SSHKey, p.SSHAgent
	}
	k.serverKey = cmp.Or(k.serverKey, p.ServerKey)
	if k.open == "" {
		k.open = port.Join(p.Open)
	}
	if k.dur == 0 {
		k.dur = p.Duration
	}
	k.allow = cmp.Or(k.allow, p.Allow)
	k.tokenKey = cmp.Or(k.tokenKey, p.TokenKey)
	k.stunServers = p.STUN
	if !k.only4 && !k.only6 {
		k.only4, k.only6 = p.Network == "udp4", p.Network == "udp6"
	}
	if len(pos) == 0 {
		pos = []string{p.Host}
	}
	if !k.set("port") {
		k.knockPort = uint(p.Port)
	}
	return pos, nil
}

// sequence sends a port-knock sequence: knock(1)'s arguments, a door
// profile, or a rotating door.
func (k *knockFlags) sequence(pos []string, out io.Writer) error {
	o := client.SequenceOptions{Network: k.network("ip"), Delay: time.Duration(k.delayMS) * time.Millisecond, Verbose: out}
	var err error
	switch {
	case k.door != "":
		if len(pos) > 1 {
			return errUsage{errors.New("--door takes at most a HOST, no ports")}
		}
		var rot *knock.Rotating
		if k.secretFile != "" {
			proto := ""
			if k.udp {
				proto = "udp"
			}
			if rot, err = client.NewRotating(k.secretFile, k.period, k.length, k.portRange, proto); err != nil {
				return err
			}
		} else {
			p, err := client.LoadProfile(k.cfg, k.door)
			if err != nil {
				return err
			}
			rot, o.Hits, o.Host = p.Rotating, p.Hits, p.Host
			if k.delayMS == 0 {
				o.Delay = p.Delay
			}
		}
		if len(pos) == 1 {
			o.Host = pos[0]
		}
		if rot != nil {
			o.Hits = rot.Sequence(k.door, rot.Window(time.Now()))
		}
		if o.Host == "" {
			return errUsage{fmt.Errorf("door %q names no host: give HOST", k.door)}
		}
	case len(pos) < 2:
		return errUsage{errors.New("knock takes HOST and at least one PORT (or --key … for SPA); see postern knock --help")}
	default:
		o.Host = pos[0]
		if o.Hits, err = client.ParseKnockArgs(pos[1:], k.udp); err != nil {
			return errUsage{err}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return client.Sequence(ctx, o)
}

// stunList is --stun, else the profile's stun_servers, else client.toml's.
func (k *knockFlags) stunList() ([]string, error) {
	if k.stun != "" {
		var out []string
		for _, s := range strings.Split(k.stun, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	}
	if len(k.stunServers) > 0 || k.allow != "auto" {
		return k.stunServers, nil
	}
	return client.LoadSTUNServers(cmp.Or(k.cfg, client.DefaultProfiles()))
}

// parseOpen reads --open: ports of the server, or of a host behind it
// (gateway mode) written HOST:proto/port[,proto/port…], an IPv6 HOST in
// brackets.
func parseOpen(s string) (netip.Addr, []port.Spec, error) {
	var to netip.Addr
	if strings.Contains(s, ":") {
		var err error
		if to, s, err = policy.SplitHost(s); err != nil {
			return to, nil, err
		}
	}
	ports, err := port.ParseList(s)
	return to, ports, err
}

// spaKnock sends one postern SPA knock.
//
// Long on purpose: the SPA knock flags become one set of client options, each flag beside the option it fills.
func (k *knockFlags) spaKnock(pos []string, stdout io.Writer) error {
	switch {
	case len(pos) != 1:
		return errUsage{errors.New("knock takes one HOST")}
	case k.keyFile == "" && k.sshKey == "" && k.sshAgent == "":
		return errUsage{errors.New("--key (or --ssh-key, --ssh-agent) is required")}
	case k.serverKey == "":
		return errUsage{errors.New("--server-key is required")}
	case k.open != "" && k.closePorts != "":
		return errUsage{errors.New("--open and --close exclude each other")}
	case k.open == "" && k.closePorts == "":
		return errUsage{errors.New("--open is required, such as --open tcp/22 (or --close tcp/22)")}
	case k.knockPort < 1 || k.knockPort > 65535:
		return errUsage{errors.New("--port must be 1 to 65535")}
	}
	what, action := "open", ""
	if k.closePorts != "" {
		what, action = "close", policy.ActionClose
	}
	to, ports, err := parseOpen(cmp.Or(k.open, k.closePorts))
	if err != nil {
		return errUsage{fmt.Errorf("--%s: %w", what, err)}
	}
	key, signer, done, err := knockIdentity(k.keyFile, k.sshKey, k.sshAgent)
	if err != nil {
		return err
	}
	defer done()
	srv, err := readServerKey(k.serverKey)
	if err != nil {
		return err
	}
	stunServers, err := k.stunList()
	if err != nil {
		return err
	}
	tokenKey, err := parseTokenKey(k.tokenKey)
	if err != nil {
		return errUsage{fmt.Errorf("--token-key: %w", err)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := client.Options{STUN: stunServers, TokenKey: tokenKey,
		Key: key, SSH: signer, ServerKey: srv, Host: pos[0], Port: uint16(k.knockPort), Network: k.network("udp"),
		Open: ports, Duration: k.dur, Allow: k.allow, BindDest: k.bind, TimeOffset: k.offset, Action: action, To: to,
	}
	var probe port.Spec
	if k.wait > 0 {
		i := slices.IndexFunc(ports, func(p port.Spec) bool { return p.Proto == port.TCP })
		if i < 0 || action != "" {
			return errUsage{errors.New("--wait needs a TCP port to open")}
		}
		probe = ports[i]
	}
	sent, err := client.KnockEach(ctx, opts)
	if len(sent) == 0 {
		return err
	}
	if err != nil {
		// One family knocked, another could not be (no route, say): the
		// door is open over the first; say what failed.
		fmt.Fprintf(os.Stderr, "postern: warning: %v\n", err)
	}
	for _, s := range sent {
		if s.Fragmented {
			fmt.Fprintf(os.Stderr, "postern: note: the path to %v is too small for a %d-byte knock: it went in fragments, "+
				"which servers before postern 0.3 (and any firewall on the way that drops fragments) lose; a suite-1 server key fits every path\n",
				s.To.Addr(), len(s.Packet))
		}
	}
	if k.wait > 0 {
		if sent, err = waitForDoor(ctx, opts, sent, probe, k.wait); err != nil {
			return err
		}
	}
	if k.verbose {
		for _, s := range sent {
			who := "source address"
			if !s.Knock.UseSource {
				who = s.Knock.Allow.String()
			}
			fmt.Fprintf(stdout, "knocked %v: %s %s for %s\n", s.To, what, port.Join(ports), who)
		}
	}
	return nil
}

// waitForDoor confirms that probe answers on every address knocked,
// knocking again with a fresh knock (a lost packet, a grant that came too
// late) at most twice, within wait in all.
func waitForDoor(ctx context.Context, o client.Options, sent []client.Sent, probe port.Spec, wait time.Duration) ([]client.Sent, error) {
	const knocks = 3
	start := time.Now()
	for n := 1; ; n++ {
		open := true
		for _, s := range sent {
			host := s.To.Addr()
			if o.To.IsValid() {
				host = o.To // the host behind the gateway, reached through it
			}
			to := netip.AddrPortFrom(host, probe.Num).String()
			c, err := client.DialPatiently(ctx, to, wait/knocks)
			if errors.Is(err, syscall.ECONNREFUSED) {
				// The SYN got through and nothing took it: whether the knock
				// opened anything cannot be told, and what comes next fails.
				return sent, fmt.Errorf("%s on %s answered with a reset: nothing listens there, or it is not a port postern "+
					"closes (then this knock may well have been refused — the server's log says)", probe, to)
			}
			if err != nil {
				open = false // dropped: the door is still shut
				break
			}
			c.Close()
		}
		if open {
			return sent, nil
		}
		if n == knocks || time.Since(start) >= wait {
			return sent, fmt.Errorf("the door did not open: %s on %s did not answer within %v after %d knocks "+
				"(check the key, the server's log — it says why it refused — and the path)", probe, o.Host, time.Since(start).Round(time.Second), n)
		}
		again, err := client.KnockEach(ctx, o)
		if len(again) == 0 {
			return sent, err
		}
		sent = again
	}
}

// knockIdentity loads what signs a knock: a postern client key file, an
// OpenSSH key file, or a key in ssh-agent (sshAgent "*": its only key).
func knockIdentity(keyFile, sshKey, sshAgent string) (spa.ClientPrivateKey, ssh.Signer, func(), error) {
	none := func() {}
	switch {
	case sshAgent != "":
		s, done, err := client.SSHAgentSigner(strings.TrimPrefix(sshAgent, "*"))
		return spa.ClientPrivateKey{}, s, done, err
	case sshKey != "":
		s, err := client.SSHKeySigner(sshKey)
		return spa.ClientPrivateKey{}, s, none, err
	}
	text, err := spa.ReadPrivateKeyFile(keyFile)
	if err != nil {
		return spa.ClientPrivateKey{}, nil, none, err
	}
	key, err := spa.ParseClientPrivateKey(text)
	if err != nil {
		return key, nil, none, fmt.Errorf("--key %s: %w", keyFile, err)
	}
	return key, nil, none, nil
}

// readServerKey accepts the key itself or the name of a file holding it.
func readServerKey(s string) (spa.ServerPublicKey, error) {
	k, err := spa.ParseServerPublicKey(s)
	if err == nil {
		return k, nil
	}
	if b, ferr := os.ReadFile(s); ferr == nil {
		if k, kerr := spa.ParseServerPublicKey(string(b)); kerr == nil {
			return k, nil
		} else {
			return k, fmt.Errorf("--server-key file %s: %w", s, kerr)
		}
	}
	return k, fmt.Errorf("--server-key: %w", err)
}

const fwknopUsage = `Usage: postern fwknop [options]   (fwknop's own options; ~/.fwknoprc stanzas are read)
  -A, --access proto/port[,…]     what to open             -a, --allow-ip ADDR   address to open it for
  -s, --source-ip                 "use the packet source"   -D, --destination HOST the fwknopd server
  -p, --server-port PORT          (62201)                   -P, --server-proto udp
  -f, --fw-timeout SECONDS        ask for this long          -N, --nat-access HOST:PORT
  -C, --server-cmd CMD            a command message          -U, --spoof-user NAME
  -n, --named-config STANZA       a .fwknoprc stanza         --rc-file FILE, --no-rc-file
  --key-rijndael KEY, --key-base64-rijndael KEY, --key-hmac KEY, --key-base64-hmac KEY, --use-hmac
  --hmac-digest-type md5|sha1|sha256|sha384|sha512|sha3_256|sha3_512, -m/--digest-type TYPE, -M/--encryption-mode cbc|legacy
  --gpg-recipient-key ID (--gpg-recip), --gpg-signer-key ID (--gpg-sign), --gpg-home-dir DIR
  --time-offset-plus T, --time-offset-minus T
  -T, --test (build and check, send nothing)   -v, --verbose   -B, --save-packet FILE
  -k, --key-gen (print new keys)               -K, --key-gen-file FILE
  -V, --version
`

func fwknopCmd(args []string, stdout, stderr io.Writer) error {
	req, err := client.ParseFwknopArgs(args)
	if err != nil {
		fmt.Fprint(stderr, fwknopUsage)
		return errUsage{err}
	}
	switch {
	case req.Help:
		fmt.Fprint(stdout, fwknopUsage)
		return nil
	case req.Version:
		// fwknop -V names its FKO protocol; this client speaks version 3.
		fmt.Fprintf(stdout, "%s, fwknop-compatible client, FKO protocol version 3.0.0\n", versionString())
		return nil
	case req.KeyGen:
		keys, err := client.FwknopKeyGen()
		if err != nil {
			return err
		}
		if req.KeyGenOut != "" {
			if err := writeSecret(req.KeyGenOut, []byte(keys)); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "[+] Wrote Rijndael and HMAC keys to: %s\n", req.KeyGenOut)
			return nil
		}
		fmt.Fprint(stdout, keys)
		return nil
	}
	settings, err := req.ResolveWarn(func(msg string) { fmt.Fprintln(stderr, msg) })
	if err != nil {
		return err
	}
	if settings.WantsResolve() {
		stun, err := client.LoadSTUNServers(client.DefaultProfiles())
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err = settings.ResolveAllow(ctx, stun)
		cancel()
		if err != nil {
			return err
		}
	}
	pkt, keys, err := client.BuildFwknop(settings, time.Now())
	if err != nil {
		return err
	}
	if req.Verbose || req.Test {
		client.PrintFwknop(stdout, pkt, keys)
	}
	if req.SaveFile != "" {
		if err := os.WriteFile(req.SaveFile, []byte(pkt.Wire+"\n"), 0o600); err != nil {
			return err
		}
	}
	if req.Test {
		if keys.GPG != nil {
			// Only the server's secret key decrypts it.
			fmt.Fprintln(stdout, "test mode: GnuPG packet built, not sent (only the server can decrypt it)")
			return nil
		}
		// Decode our own packet, as fwknop -T does.
		if _, _, err := keys.Open(pkt.Wire); err != nil {
			return fmt.Errorf("self-check of the packet failed: %w", err)
		}
		fmt.Fprintln(stdout, "test mode: packet built and decoded, not sent")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return client.SendFwknop(ctx, pkt)
}

// writeSecretFlags writes a key file with mode 0600, also when it exists
// already with a looser mode; extra are more open(2) flags.
func writeSecretFlags(path string, data []byte, extra int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|extra, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// covertKnock sends a covert knock. Port, host, what to open and the secret
// come from the flags, else from a [[covert]] profile of the same name.
func (k *knockFlags) covertKnock(pos []string, out io.Writer) error {
	door, secretFile, open, allow := k.door, k.secretFile, k.open, k.allow
	if door == "" {
		return errUsage{errors.New("--covert needs --door NAME (the server's [[covert]] name)")}
	}
	prof, err := client.LoadCovertProfile(k.cfg, door)
	if err != nil {
		return err
	}
	if prof == nil {
		prof = &client.CovertProfile{}
	}
	o := client.CovertOptions{Door: door, Decoys: k.decoys, Delay: time.Duration(k.delayMS) * time.Millisecond,
		Verbose: out, Port: prof.Port}
	if k.set("port") {
		o.Port = uint16(k.knockPort)
	}
	if o.Port == 0 {
		return errUsage{errors.New("--covert needs --port (the door's TCP port) or a [[covert]] profile")}
	}
	host := prof.Host
	if len(pos) == 1 {
		host = pos[0]
	} else if len(pos) > 1 {
		return errUsage{errors.New("--covert takes one HOST")}
	}
	if host == "" {
		return errUsage{errors.New("--covert needs a HOST")}
	}
	if o.Host, err = client.ResolveHost(k.network("ip"), host); err != nil {
		return err
	}
	if open == "" {
		open = cmp.Or(prof.Open, "tcp/22")
	}
	if o.Open, err = port.Parse(open); err != nil {
		return errUsage{fmt.Errorf("--open: %w", err)}
	}
	if secretFile == "" {
		secretFile = prof.SecretFile
	}
	if secretFile == "" {
		return errUsage{errors.New("--covert needs --secret-file")}
	}
	secret, err := spa.ReadSecretFile(secretFile)
	if err != nil {
		return err
	}
	o.Secret = []byte(strings.TrimSpace(secret))
	if allow != "" {
		if o.Allow, err = netip.ParseAddr(allow); err != nil {
			return errUsage{fmt.Errorf("--allow %q: want the address the server sees you as", allow)}
		}
	}
	for _, a := range strings.Split(k.decoyFrom, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return errUsage{fmt.Errorf("--decoy-from %q: not an address", a)}
		}
		o.From = append(o.From, ip)
	}
	return client.CovertKnock(o)
}

// closeProfile sends the close request for what knockProfile opened (a
// session ended); a failure is only a warning, the grant still expires.
func closeProfile(p *client.SPAProfile, open []port.Spec, stderr io.Writer) {
	if !p.CloseOnExit {
		return
	}
	if _, err := knockProfileAction(p, open, policy.ActionClose); err != nil {
		fmt.Fprintf(stderr, "postern: warning: closing the door: %v (it closes on its own when the grant ends)\n", err)
	}
}

func knockProfileAction(p *client.SPAProfile, open []port.Spec, action string) ([]client.Sent, error) {
	return knockProfileThen(p, open, action, nil)
}

// doorBudget is how long postern ssh and postern proxy wait for the door
// to answer, knocking again (fresh) at most twice within it.
const doorBudget = 15 * time.Second

// knockProfileThen knocks as the profile says and, with then, goes on
// with the knock's options while the identity is at hand (re-knocks).
func knockProfileThen(p *client.SPAProfile, open []port.Spec, action string,
	then func(context.Context, client.Options, []client.Sent) error) ([]client.Sent, error) {
	key, signer, done, err := knockIdentity(p.KeyFile, p.SSHKey, p.SSHAgent)
	if err != nil {
		return nil, err
	}
	defer done()
	srv, err := readServerKey(p.ServerKey)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), doorBudget+5*time.Second)
	defer cancel()
	tokenKey, err := parseTokenKey(p.TokenKey)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", p.Name, err)
	}
	opts := client.Options{Key: key, SSH: signer, ServerKey: srv, Host: p.Host, Port: p.Port, Network: p.Network,
		Open: open, Duration: p.Duration, Allow: p.Allow, STUN: p.STUN, Action: action, TokenKey: tokenKey}
	sent, err := client.KnockEach(ctx, opts)
	if len(sent) == 0 {
		return nil, err
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "postern: warning: %v\n", err)
	}
	if action == "" {
		time.Sleep(p.Wait)
	}
	if then != nil {
		return sent, then(ctx, opts, sent)
	}
	return sent, nil
}

// openDoor connects to addr through a door just knocked: each attempt
// waits twice as long as the one before (DialPatiently), and when a third
// of the budget passes without an answer, a fresh knock goes (a lost
// packet, a grant that came too late), at most twice.
func openDoor(ctx context.Context, o client.Options, addr string, budget time.Duration) (net.Conn, error) {
	const knocks = 3
	start := time.Now()
	for n := 1; ; n++ {
		c, err := client.DialPatiently(ctx, addr, budget/knocks)
		if err == nil {
			return c, nil
		}
		if n == knocks || ctx.Err() != nil || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("the door did not open: %s did not answer within %v after %d knocks "+
				"(check the key, the server's log — it says why it refused — and the path): %w",
				addr, time.Since(start).Round(time.Second), n, err)
		}
		if _, err := client.KnockEach(ctx, o); err != nil {
			return nil, err
		}
	}
}

func profileFor(path, name string) (*client.SPAProfile, error) {
	p, err := client.LoadSPAProfile(path, name)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fmt.Errorf("no [[spa]] profile named %q or with host %q in %s", name, name, path)
	}
	return p, nil
}

// proxyCmd is for ssh_config: "ProxyCommand postern proxy %h %p". It knocks
// with the [[spa]] profile for the host (asking for the port ssh wants if
// the profile does not list it), then relays.
func proxyCmd(pos []string, profiles, name string, stdin io.Reader, stdout io.Writer) error {
	n, err := strconv.ParseUint(pos[1], 10, 16)
	if err != nil || n == 0 {
		return errUsage{fmt.Errorf("port %q", pos[1])}
	}
	p, err := profileFor(cmp.Or(profiles, client.DefaultProfiles()), cmp.Or(name, pos[0]))
	if err != nil {
		return err
	}
	want := port.Spec{Proto: port.TCP, Num: uint16(n)}
	open := p.Open
	if !slices.Contains(open, want) {
		open = []port.Spec{want}
	}
	var conn net.Conn
	if _, err := knockProfileThen(p, open, "", func(ctx context.Context, o client.Options, _ []client.Sent) (err error) {
		conn, err = openDoor(ctx, o, net.JoinHostPort(pos[0], pos[1]), doorBudget)
		return err
	}); err != nil {
		return err
	}
	// ssh ends its ProxyCommand with SIGHUP as it exits, usually before
	// the server's end of the connection arrives, and a write to the
	// stdout it closed would raise SIGPIPE: either way the session is
	// over and the door is closed behind it.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGPIPE, os.Interrupt)
	defer signal.Stop(sig)
	var ended atomic.Bool
	done := make(chan struct{})
	go func() {
		select {
		case <-sig:
			ended.Store(true)
			conn.Close()
		case <-done:
		}
	}()
	err = client.Relay(conn, stdin, stdout)
	close(done)
	closeProfile(p, open, os.Stderr)
	if ended.Load() {
		return nil
	}
	return err
}

// sshValued are the ssh(1) options that take an argument (OpenSSH's
// getopt string).
const sshValued = "BbcDEeFIiJLlmOoPpQRSWw"

// splitSSHArgs splits what follows the profile NAME as ssh orders it:
// options (with their arguments) first, then the remote command, which
// must come after the host ("postern ssh office uptime").
func splitSSHArgs(args []string) (opts, command []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return args[:i], args[i+1:]
		}
		if len(a) < 2 || a[0] != '-' {
			return args[:i], args[i:]
		}
		for j := 1; j < len(a); j++ {
			if strings.IndexByte(sshValued, a[j]) >= 0 {
				if j == len(a)-1 {
					i++ // the value is the next argument
				}
				break
			}
		}
	}
	return args, nil
}

// sshCmd knocks a [[spa]] profile and replaces itself with ssh to the
// profile's host, passing the given ssh options on.
func sshCmd(args []string, stdout, stderr io.Writer) error {
	const sshUsage = "Usage: postern ssh NAME [ssh options] [command]\n  knock the [[spa]] profile NAME of the client config, then run ssh to its host\n"
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		fmt.Fprint(stdout, sshUsage)
		return nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, sshUsage)
		return errUsage{errors.New("ssh takes a profile NAME, then ssh options")}
	}
	p, err := profileFor(client.DefaultProfiles(), args[0])
	if err != nil {
		return err
	}
	probe := slices.IndexFunc(p.Open, func(sp port.Spec) bool { return sp.Proto == port.TCP })
	sent, err := knockProfileThen(p, p.Open, "", func(ctx context.Context, o client.Options, sent []client.Sent) error {
		if probe < 0 {
			return nil // nothing to connect to: ssh will tell
		}
		// ssh waits minutes on a dropped SYN: confirm the door first.
		_, err := waitForDoor(ctx, o, sent, p.Open[probe], doorBudget)
		return err
	})
	if err != nil {
		return err
	}
	ssh, err := exec.LookPath("ssh")
	if err != nil {
		return err
	}
	opts, command := splitSSHArgs(args[1:])
	argv := append([]string{"ssh"}, opts...)
	if len(sent) == 1 {
		// Only one family was knocked: ssh must not try the other first
		// and wait on its dropped SYN.
		argv = append(argv, map[bool]string{true: "-4", false: "-6"}[sent[0].To.Addr().Is4()])
	}
	argv = append(argv, p.Host)
	argv = append(argv, command...)
	if !p.CloseOnExit {
		return execProgram(ssh, argv)
	}
	// ssh runs as a child so that the door can be closed after it.
	code, err := runProgram(ssh, argv)
	closeProfile(p, p.Open, stderr)
	if err != nil {
		return err
	}
	if code != 0 {
		os.Exit(code)
	}
	return nil
}
