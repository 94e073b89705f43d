package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/postern/postern/config"
)

// The command tree. cobra (with pflag) is used because one definition per
// command gives GNU-style flags (--key, with the short forms knock(1) and
// fwknop users know), --help on every command, shell completion and the
// man pages, instead of four hand-kept copies that drift apart. knock(1)'s
// and fwknop's own argument forms keep working: knock's are ordinary
// positional arguments, and fwknop's options go to fwknop's own parser.

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "postern",
		Short: "single packet authorization and port knocking for Linux",
		Long: `postern keeps network services invisible behind a closed firewall. An
authorised client sends one encrypted, signed packet (a knock), a port-knock
sequence, an fwknop packet or two covert SYNs; the daemon opens exactly the
asked-for port, for that client's address, for a limited time, and the kernel
closes it again.

Every command takes -h or --help and then does nothing else.`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return errUsage{err} })
	root.AddCommand(genkeyCommand(), pubkeyCommand(), tokenCommand(), serverCommand(), checkConfigCommand(), setupCommand(),
		reloadCommand(), knockCommand(), fwknopCommand(), proxyCommand(), sshCommand(), statusCommand(),
		revokeCommand(), cleanupCommand(), versionCommand(), manCommand(), profileCommand())
	return root
}

// args checks the number of positional arguments, as a usage error.
func args(lo, hi int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, a []string) error {
		if len(a) < lo || (hi >= 0 && len(a) > hi) {
			return errUsage{fmt.Errorf("%s takes %s", c.Name(), what)}
		}
		return nil
	}
}

func configFlag(c *cobra.Command) *string {
	return c.Flags().StringP("config", "c", defaultConfig, "configuration `file`")
}

// fallbackStateDir is where the closed-state snapshot is looked for when
// the configuration cannot say where its state_dir is.
var fallbackStateDir string

func snapshotFlag(c *cobra.Command) {
	c.Flags().StringVar(&fallbackStateDir, "state-dir", "", "`dir` of the last good run's closed state, if the configuration "+
		"cannot be read and does not say (default "+config.DefaultStateDir+")")
}

func genkeyCommand() *cobra.Command {
	var srv, pq bool
	var out string
	c := &cobra.Command{
		Use:   "genkey [--server [--pq]] [-o FILE]",
		Short: "print a new client (or server) private key, or write it to a new file (mode 0600)",
		Args:  args(0, 0, "no arguments"),
		RunE:  func(c *cobra.Command, _ []string) error { return genkey(srv, pq, out, c.OutOrStdout()) },
	}
	c.Flags().StringVarP(&out, "output", "o", "", "write the key to `file`, created with mode 0600 (an existing file is never overwritten) and print its public key")
	c.Flags().BoolVar(&srv, "server", false, "make a server key instead of a client key")
	c.Flags().BoolVar(&pq, "pq", false, "with --server: a post-quantum hybrid (ML-KEM-768 + X25519) key; its knocks are 1412 bytes")
	return c
}

func pubkeyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pubkey < KEYFILE",
		Short: "print the public key of the private key on standard input",
		Args:  args(0, 0, "no arguments (the key comes on standard input)"),
		RunE:  func(c *cobra.Command, _ []string) error { return pubkey(c.InOrStdin(), c.OutOrStdout()) },
	}
}

func serverCommand() *cobra.Command {
	var debug bool
	c := &cobra.Command{
		Use:   "server [-c FILE] [-D]",
		Short: "run the daemon in the foreground (systemd Type=notify)",
		Long: `Run the daemon in the foreground. It installs the closed state first (protected
and knock ports dropped), then reads keys and state; logs go to standard error.
SIGHUP re-reads the configuration (and reopens a knockd LogFile); SIGTERM stops.
A configuration that cannot be read makes it hold the closed state of the last
good run (state_dir/closed-state.json) and serve no knocks until the file is
fixed and reloaded.`,
		Args: args(0, 0, "no arguments (did you mean -c FILE?)"),
	}
	path := configFlag(c)
	snapshotFlag(c)
	c.Flags().BoolVarP(&debug, "debug", "D", false, "log every knock step (debug)")
	c.RunE = func(c *cobra.Command, _ []string) error { return serve(*path, debug, c.ErrOrStderr()) }
	return c
}

func tokenCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "token [-c FILE] CLIENT",
		Short: "print a client's pre-authentication key (its knocks then get through floods)",
		Long: `Print the pre-authentication key of CLIENT, a [[client]] name or public key
of the configuration. Give it to that client (client.toml token_key, or
postern knock --token-key): its knocks then carry a token that the server
checks before any public-key work, so a flood made with the server's public
key cannot crowd them out. The key is derived from the server's private key:
nothing is stored, and removing the client makes its tokens match nothing.`,
		Args: args(1, 1, "one CLIENT (a [[client]] name or public key)"),
	}
	path := configFlag(c)
	c.RunE = func(c *cobra.Command, pos []string) error { return token(*path, pos[0], c.OutOrStdout()) }
	return c
}

func checkConfigCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "check-config [-c FILE]",
		Short: "validate a configuration and the files it names; touches nothing",
		Args:  args(0, 0, "no arguments (did you mean -c FILE?)"),
	}
	path := configFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error { return checkConfig(*path, c.OutOrStdout(), c.ErrOrStderr()) }
	return c
}

func setupCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "setup [-c FILE]",
		Short: "install the closed state only (for ExecStartPre= or early boot)",
		Long: `Install the closed state only: protected and knock ports dropped, live grants
kept. A configuration that cannot be read makes setup install the closed state
of the last good run (state_dir/closed-state.json) instead, and fail.`,
		Args: args(0, 0, "no arguments (did you mean -c FILE?)"),
	}
	path := configFlag(c)
	snapshotFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error { return setupCmd(*path, c.OutOrStdout()) }
	return c
}

func reloadCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "reload [-c FILE]",
		Short: "check FILE, then have the running daemon re-read it (SIGHUP)",
		Args:  args(0, 0, "no arguments (did you mean -c FILE?)"),
	}
	path := configFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error { return reloadCmd(*path, c.OutOrStdout()) }
	return c
}

func knockCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "knock [flags] HOST [PORT[:tcp|:udp|:icmp]…]",
		Short: "send a knock: postern SPA, a port sequence (as knock(1)), a door, or a covert knock",
		Long: `Send a knock: one postern SPA knock, a [[spa]] profile, a port-knock sequence
as knock(1) sends it, a door from the client config (or a rotating door), or
a covert knock:

    postern knock --key FILE --server-key KEY --open tcp/22 [flags] HOST
    postern knock --profile NAME
    postern knock [-u] [-d MS] [-4|-6] [-v] HOST PORT[:tcp|:udp|:icmp]...
    postern knock --door NAME [--secret-file FILE] [HOST]
    postern knock --covert --door NAME --secret-file FILE [--port P] [--open tcp/22] HOST`,
	}
	k := addKnockFlags(c.Flags())
	c.RunE = func(c *cobra.Command, pos []string) error { return k.run(pos, c.OutOrStdout()) }
	return c
}

func fwknopCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "fwknop [fwknop options]",
		Short: "knock like the fwknop client (its options; reads ~/.fwknoprc)",
		Long:  "Knock like the fwknop client, with fwknop's own options.\n\n" + fwknopUsage,
		// fwknop's options (-A, -a, -D, --key-base64-rijndael …) go to
		// fwknop's own parser, which also answers -h.
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, a []string) error {
			return fwknopCmd(a, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
}

func profileCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "profile export NAME | profile import URI",
		Short: "share a client profile as a postern:// URI (or QR code), or add one from it",
	}
	var profiles, name, key string
	var qr bool
	export := &cobra.Command{
		Use:   "export NAME",
		Short: "print the [[spa]] profile NAME as a provisioning URI (last line; a QR code first on a terminal or with --qr); never the private key",
		Args:  args(1, 1, "the profile NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			return profileExport(profiles, a[0], qr, c.OutOrStdout())
		},
	}
	export.Flags().BoolVar(&qr, "qr", false, "print the QR code even when standard output is not a terminal")
	imp := &cobra.Command{
		Use:   "import URI",
		Short: "add the [[spa]] profile a provisioning URI describes to the client config",
		Args:  args(1, 1, "the postern://knock?… URI"),
		RunE: func(c *cobra.Command, a []string) error {
			return profileImport(profiles, a[0], name, key, c.OutOrStdout())
		},
	}
	imp.Flags().StringVar(&name, "name", "", "the profile's name (default: the host)")
	imp.Flags().StringVar(&key, "key", "", "the private key `file` it knocks with (default client.key beside the client config)")
	for _, sub := range []*cobra.Command{export, imp} {
		sub.Flags().StringVar(&profiles, "config", "", "client config `file` (default ~/.config/postern/client.toml)")
	}
	c.AddCommand(export, imp)
	return c
}

func proxyCommand() *cobra.Command {
	var profiles, name string
	c := &cobra.Command{
		Use:   "proxy HOST PORT",
		Short: "knock (the [[spa]] profile for HOST), then relay: ssh's ProxyCommand postern proxy %h %p",
		Args:  args(2, 2, "HOST PORT (ProxyCommand postern proxy %h %p)"),
		RunE: func(c *cobra.Command, pos []string) error {
			return proxyCmd(pos, profiles, name, c.InOrStdin(), c.OutOrStdout())
		},
	}
	c.Flags().StringVar(&profiles, "config", "", "client config `file` with [[spa]] profiles (default ~/.config/postern/client.toml)")
	c.Flags().StringVar(&name, "profile", "", "profile `name` (default: the profile whose name or host is HOST)")
	return c
}

func sshCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh NAME [ssh options]",
		Short: "knock the [[spa]] profile NAME, then run ssh to its host",
		// Everything after NAME belongs to ssh.
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, a []string) error {
			return sshCmd(a, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
}

func statusCommand() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [--json]",
		Short: "say whether the daemon runs, what is protected, and list live grants",
		Args:  args(0, 0, "no arguments"),
		RunE:  func(c *cobra.Command, _ []string) error { return status(asJSON, c.OutOrStdout()) },
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func revokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ADDR [PROTO/PORT]",
		Short: "close the live grants of ADDR (only the one for PROTO/PORT if given) now",
		Args:  args(1, 2, "ADDR and optionally PROTO/PORT"),
		RunE:  func(c *cobra.Command, pos []string) error { return revokeCmd(pos, c.OutOrStdout()) },
	}
}

func cleanupCommand() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "cleanup [--force]",
		Short: "remove everything postern installed in the firewall (refused while the daemon runs)",
		Args:  args(0, 0, "no arguments"),
		RunE:  func(c *cobra.Command, _ []string) error { return cleanup(force, c.OutOrStdout()) },
	}
	c.Flags().BoolVar(&force, "force", false, "with a daemon running: stop it (its log says who asked), then remove its rules — opens its protected ports to everyone")
	return c
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version (also --version)",
		Args:  args(0, 0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(c.OutOrStdout(), versionString())
			return err
		},
	}
}

// manCommand writes the man pages: postern(8) and one page per command,
// from the same definitions as --help, and postern.toml(5) from the
// reference configuration.
func manCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "man DIR",
		Short: "write the man pages (postern(8), a page per command, postern.toml(5)) into DIR",
		Args:  args(1, 1, "the directory to write into"),
		RunE: func(c *cobra.Command, a []string) error {
			dir := a[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root := c.Root()
			root.DisableAutoGenTag = true
			// postern(8) is where a reader starts: the quick start and the
			// files, which --help leaves out.
			root.Long += "\n\n" + manFiles
			root.Example = manExamples
			// No Windows shell on a Linux server's man shelf.
			if comp, _, err := root.Find([]string{"completion", "powershell"}); err == nil && comp.Name() == "powershell" {
				comp.Hidden = true
			}
			header := &doc.GenManHeader{Section: "8", Source: "postern " + shortVersion(), Manual: "postern manual"}
			if epoch, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
				date := time.Unix(epoch, 0).UTC()
				header.Date = &date // reproducible pages
			}
			if err := doc.GenManTree(root, header, dir); err != nil {
				return err
			}
			page := config.ManPage(version)
			if err := os.WriteFile(filepath.Join(dir, "postern.toml.5"), []byte(page), 0o644); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(dir, "postern.8")); err != nil {
				return errors.New("postern.8 was not written")
			}
			return nil
		},
	}
}

const manFiles = `FILES

/etc/postern/postern.toml: the configuration (postern.toml(5)); check it with
postern check-config, apply it with postern reload.

/etc/postern/server.key: the server's private key (postern genkey --server -o FILE).

/var/lib/postern: state_dir — replay state, pending stop commands, the closed
state a broken configuration falls back on (closed-state.json).

/run/postern: the daemon's pid file and control socket.

~/.config/postern/client.toml and client.key: a client's profiles and key
(postern ssh NAME, postern proxy HOST PORT).

postern.service and postern-setup.service: the systemd units; the latter
installs the closed state early at boot.`

const manExamples = `On the server:

  postern genkey --server -o /etc/postern/server.key
  postern check-config && systemctl enable --now postern
  postern status
  postern revoke 198.51.100.7

On a client:

  postern genkey -o ~/.config/postern/client.key
  postern knock --key ~/.config/postern/client.key --server-key SERVER_PUBLIC_KEY --open tcp/22 server.example.org
  postern ssh office uptime

In ~/.ssh/config:

  Host office
      ProxyCommand postern proxy %h %p`
