package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/skip2/go-qrcode"

	"github.com/postern/postern/client"
)

// profileExport prints the provisioning URI of profile name (its last
// line), preceded on a terminal (or with qr) by the same as a QR code for
// a phone. The private key is never in it.
func profileExport(profiles, name string, qr bool, stdout io.Writer) error {
	profiles = cmp.Or(profiles, client.DefaultProfiles())
	p, err := profileFor(profiles, name)
	if err != nil {
		return err
	}
	srv, err := readServerKey(p.ServerKey)
	if err != nil {
		return fmt.Errorf("%s: spa %q: server_key: %w", profiles, p.Name, err)
	}
	uri := client.ProvisionOf(p, srv.String()).URI()
	if qr || isTerminal(stdout) {
		code, err := qrcode.New(uri, qrcode.Low)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, code.ToSmallString(false))
	}
	_, err = fmt.Fprintln(stdout, uri)
	return err
}

// profileImport writes the [[spa]] profile a provisioning URI describes,
// knocking with keyFile (default client.key next to the profiles, which
// must exist: the URI never carries a private key).
func profileImport(profiles, uri, name, keyFile string, stdout io.Writer) error {
	pv, err := client.ParseProvisionURI(uri)
	if err != nil {
		return errUsage{err}
	}
	profiles = cmp.Or(profiles, client.DefaultProfiles())
	if profiles == "" {
		return errors.New("no home directory for client.toml: give --config FILE")
	}
	keyFile = cmp.Or(keyFile, filepath.Join(filepath.Dir(profiles), "client.key"))
	if _, err := os.Stat(keyFile); err != nil {
		return fmt.Errorf("the profile knocks with %s, which is not there: make it with postern genkey -o %s (and give its public key to the server), or name another with --key",
			keyFile, keyFile)
	}
	name = cmp.Or(name, pv.Host)
	if err := client.AddSPAProfile(profiles, name, keyFile, pv); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "added [[spa]] profile %q (%s) to %s: postern knock --profile %s, postern ssh %s\n",
		name, pv.Host, profiles, name, name)
	return err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && !strings.HasPrefix(os.Getenv("TERM"), "dumb")
}
