package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"

	"github.com/postern/postern/fko"
)

// DefaultResolveURL is fwknop's own default for -R: a page on its author's
// site that answers with the caller's address. It is asked only when
// neither --resolve-url nor stun_servers says otherwise.
const DefaultResolveURL = "https://www.cipherdyne.org/cgi-bin/myip"

// WantsResolve reports whether the settings ask for the public address to
// be discovered (fwknop -R, --resolve-url, ALLOW_IP resolve). An address in
// ALLOW_IP (-a, -s, or the rc file's) overrides any resolution, as in
// fwknop (config_init.c: "Make sure -a overrides IP resolution"): no lookup
// is made and the address is the one given.
func (s FwknopSettings) WantsResolve() bool {
	allow := s.get("ALLOW_IP")
	if allow != "" && !strings.EqualFold(allow, "resolve") {
		return false
	}
	return allow != "" || s.yes("RESOLVE_IP_HTTPS") || s.yes("RESOLVE_IP_HTTP") ||
		s.yes("RESOLVE_HTTP_ONLY") || s.get("RESOLVE_URL") != ""
}

// ResolveAllow sets ALLOW_IP to this host's public IPv4 address, as fwknop
// -R does: from RESOLVE_URL (the first IPv4 address in the page), else
// from the STUN servers given, else from fwknop's default URL
// (RESOLVE_HTTP_ONLY: over plain HTTP).
func (s FwknopSettings) ResolveAllow(ctx context.Context, stun []string) error {
	var a netip.Addr
	var err error
	switch u := s.get("RESOLVE_URL"); {
	case u != "":
		a, err = resolveURL(ctx, u)
	case len(stun) > 0:
		a, err = DiscoverAddress(ctx, "udp4", stun)
	default:
		u = DefaultResolveURL
		if s.yes("RESOLVE_HTTP_ONLY") {
			u = "http://" + strings.TrimPrefix(u, "https://")
		}
		a, err = resolveURL(ctx, u)
	}
	if err != nil {
		return fmt.Errorf("resolving this host's public address (-R): %w", err)
	}
	s["ALLOW_IP"] = fko.RCValue{Value: a.String(), File: "resolved"}
	return nil
}

// resolveURL fetches url and returns the first IPv4 address in the answer.
func resolveURL(ctx context.Context, url string) (netip.Addr, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return netip.Addr{}, err
	}
	req.Header.Set("User-Agent", "Fwknop/2.6.10")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return netip.Addr{}, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return netip.Addr{}, fmt.Errorf("%s: %s", url, res.Status)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil {
		return netip.Addr{}, err
	}
	if a, ok := firstIPv4(string(body)); ok {
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%s: no IPv4 address in the answer", url)
}

// firstIPv4 finds the first dotted-quad address in text.
func firstIPv4(text string) (netip.Addr, bool) {
	for _, tok := range strings.FieldsFunc(text, func(r rune) bool { return !(r == '.' || r >= '0' && r <= '9') }) {
		if a, err := netip.ParseAddr(strings.Trim(tok, ".")); err == nil && a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}
