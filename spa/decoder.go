package spa

import (
	"log/slog"

	"github.com/postern/postern/capture"
	"github.com/postern/postern/policy"
)

// Decoder is the postern SPA knock language in the daemon's pipeline: it
// turns a captured knock into a policy Request, or a refusal whose reason
// is a Reason's name. It holds scratch space for one packet at a time and
// never logs, counts or touches the firewall.
type Decoder struct {
	v     *Verifier
	knock Knock
	out   policy.Verdict
}

// NewDecoder wraps v.
func NewDecoder(v *Verifier) *Decoder { return &Decoder{v: v} }

// Decode verifies one knock and hands emit its verdict. Junk allocates
// nothing.
func (d *Decoder) Decode(f *capture.Frame, emit policy.Sink) {
	k := &d.knock
	if r := d.v.Verify(f.Src, f.Dst, f.Payload, f.Time, k); r != Accepted {
		d.out.Refuse(policy.SPA, f.Src, "", r.String())
		if err := d.v.cfg.Replay.Err(); r == StateError && err != nil {
			d.out.Add(slog.String("detail", err.Error()))
		}
		emit(&d.out)
		return
	}
	d.out.Grant(policy.Request{
		Language: policy.SPA, Client: d.v.ClientName(k), Src: f.Src, UseSource: k.UseSource,
		Allow: k.Allow, Ports: k.Ports, Duration: k.Duration, Action: k.Action, To: k.To,
	})
	emit(&d.out)
}
