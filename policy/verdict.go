package policy

import (
	"log/slog"
	"net/netip"
)

// Verdict is what a decoder made of a packet (or of its own timer): a
// Request for policy to decide, or a refusal with its reason. Decoders fill
// one they are given and hand it on; refusing junk allocates nothing.
type Verdict struct {
	Language Language
	Src      netip.Addr
	// Reason is why the knock was refused; empty for a Request.
	Reason string
	// Note, when set, makes v neither a request nor a refusal but a step
	// worth a debug line ("knock progress").
	Note string
	// Client names who knocked, when that is known (also in refusals).
	Client  string
	Request Request
	// Attrs are extra log fields (stage, user, door); at most len(attrs).
	attrs  [6]slog.Attr
	nattrs int
}

// Sink receives verdicts. The pointer is valid only during the call.
type Sink func(*Verdict)

// Refuse makes v a refusal.
func (v *Verdict) Refuse(lang Language, src netip.Addr, client, reason string, attrs ...slog.Attr) {
	*v = Verdict{Language: lang, Src: src, Client: client, Reason: reason}
	v.Add(attrs...)
}

// Grant makes v a Request to decide.
func (v *Verdict) Grant(r Request, attrs ...slog.Attr) {
	*v = Verdict{Language: r.Language, Src: r.Src, Client: r.Client, Request: r}
	v.Add(attrs...)
}

// Add appends log fields; those beyond the room are dropped.
func (v *Verdict) Add(attrs ...slog.Attr) {
	v.nattrs += copy(v.attrs[v.nattrs:], attrs)
}

// Attrs returns the extra log fields.
func (v *Verdict) Attrs() []slog.Attr { return v.attrs[:v.nattrs] }
