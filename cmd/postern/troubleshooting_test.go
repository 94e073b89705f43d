package main

import (
	"os"
	"strings"
	"testing"

	"github.com/postern/postern/covert"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
	"github.com/postern/postern/spa"
)

// README's Troubleshooting explains every refusal reason the daemon can
// log: a reason added without an entry fails here.
func TestTroubleshootingCoversEveryReason(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(data), "\n## Troubleshooting\n")
	if !ok {
		t.Fatal("README.md has no Troubleshooting section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var reasons []string
	for _, r := range spa.AllReasons() {
		if r != spa.Accepted {
			reasons = append(reasons, r.String())
		}
	}
	for _, r := range policy.Refusals {
		reasons = append(reasons, string(r))
	}
	reasons = append(reasons, fko.Reasons...)
	reasons = append(reasons, knock.Reasons...)
	reasons = append(reasons, covert.Reasons...)
	for _, r := range reasons {
		if !strings.Contains(sec, "`"+r+"`") {
			t.Errorf("Troubleshooting does not explain reason %q", r)
		}
	}
}
