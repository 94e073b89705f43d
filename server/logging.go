package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/postern/postern/command"
	"github.com/postern/postern/config"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/policy"
)

// Logs are the daemon's logger and its extra outputs.
type Logs struct {
	*slog.Logger
	file    *reopener // knockd LogFile, or nil
	closers []io.Closer
}

// Reopen reopens the knockd LogFile (after logrotate moved it; knockd does
// this on SIGHUP).
func (l *Logs) Reopen() error {
	if l.file == nil {
		return nil
	}
	return l.file.reopen()
}

// Close releases the outputs.
func (l *Logs) Close() {
	for _, c := range l.closers {
		c.Close()
	}
}

// reopener is an append-only file that can be reopened under its name.
type reopener struct {
	mu   sync.Mutex
	path string
	f    *os.File
}

func (r *reopener) reopen() error {
	// Never through a symbolic link: as root, that appends wherever it
	// points.
	f, err := os.OpenFile(r.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return err
	}
	r.mu.Lock()
	old := r.f
	r.f = f
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (r *reopener) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Write(b)
}

func (r *reopener) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Close()
}

// NewLogger returns the daemon's logger: key=value lines on stderr, plus the
// outputs a knockd.conf asks for (LogFile, UseSyslog), so that whatever
// watched knockd's log keeps working.
func NewLogger(cfg *config.Config, stderr io.Writer, level slog.Level) (*Logs, error) {
	opts := &slog.HandlerOptions{Level: level}
	journal := underJournal(stderr)
	if journal {
		stderr = &priorityWriter{w: stderr}
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{} // the journal stamps each line itself
			}
			return a
		}
	}
	var main slog.Handler = slog.NewTextHandler(stderr, opts)
	if cfg.LogFormat == "json" {
		jsonOpts := *opts
		jsonOpts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if opts.ReplaceAttr != nil {
				a = opts.ReplaceAttr(groups, a)
			}
			if a.Value.Kind() == slog.KindDuration {
				// "30s", as in the text lines and the configuration, not
				// JSON's nanoseconds.
				a.Value = slog.StringValue(a.Value.Duration().String())
			}
			return a
		}
		main = slog.NewJSONHandler(stderr, &jsonOpts)
	}
	if journal {
		main = &priorityHandler{Handler: main, mu: new(sync.Mutex), w: stderr.(*priorityWriter)}
	}
	handlers := []slog.Handler{main}
	logs := &Logs{}
	if k := cfg.Knockd; k != nil {
		if k.LogFile != "" {
			r := &reopener{path: k.LogFile}
			if err := r.reopen(); err != nil {
				return nil, fmt.Errorf("%s: LogFile: %w", k.Path, err)
			}
			logs.file = r
			logs.closers = append(logs.closers, r)
			handlers = append(handlers, &lineHandler{mu: new(sync.Mutex), w: r, stamp: true})
		}
		if k.UseSyslog {
			w, err := syslog.New(syslog.LOG_NOTICE|syslog.LOG_USER, "postern")
			if err != nil {
				// knockd carries on without syslog too; say so once.
				handlers[0].Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelWarn,
					"UseSyslog: no syslog daemon; logging to stderr only", 0))
			} else {
				logs.closers = append(logs.closers, w)
				handlers = append(handlers, &lineHandler{mu: new(sync.Mutex), w: w})
			}
		}
	}
	logs.Logger = slog.New(slog.NewMultiHandler(handlers...))
	return logs, nil
}

// underJournal reports whether w is the journal's stream for this service
// (systemd sets JOURNAL_STREAM to its device and inode).
func underJournal(w io.Writer) bool {
	f, ok := w.(*os.File)
	js := os.Getenv("JOURNAL_STREAM")
	if !ok || js == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// priorityWriter puts the syslog priority of the line being written in
// front of it ("<4>" for a warning), as journald reads stderr lines
// (sd-daemon(3)), so `journalctl -p warning` finds refusals.
type priorityWriter struct {
	w      io.Writer
	prefix string
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix); err != nil {
		return 0, err
	}
	return p.w.Write(b)
}

// priorityHandler sets the writer's prefix for each record; one record is
// one Write.
type priorityHandler struct {
	slog.Handler
	mu *sync.Mutex // shared by the handlers WithAttrs makes: they share w
	w  *priorityWriter
}

func (h *priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case r.Level >= slog.LevelError:
		h.w.prefix = "<3>"
	case r.Level >= slog.LevelWarn:
		h.w.prefix = "<4>"
	case r.Level >= slog.LevelInfo:
		h.w.prefix = "<6>"
	default:
		h.w.prefix = "<7>"
	}
	return h.Handler.Handle(ctx, r)
}

func (h *priorityHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &priorityHandler{Handler: h.Handler.WithAttrs(as), mu: h.mu, w: h.w}
}

func (h *priorityHandler) WithGroup(name string) slog.Handler {
	return &priorityHandler{Handler: h.Handler.WithGroup(name), mu: h.mu, w: h.w}
}

// lineHandler writes knockd's log lines: "[YYYY-MM-DD HH:MM] 198.18.0.2:
// openSSH: Stage 1", "…: OPEN SESAME", "openSSH: running command: …" (the
// stamp is left out for syslog, which adds its own), so tools that watch
// knockd's log keep working. Nothing else is written there.
type lineHandler struct {
	mu    *sync.Mutex
	w     io.Writer
	stamp bool
	attrs []slog.Attr
}

// Every level is enabled: knockd logs each stage, which postern logs to
// stderr only at debug level.
func (h *lineHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	kv := map[string]string{}
	var rest strings.Builder
	add := func(a slog.Attr) bool {
		v := printable(a.Value.String())
		kv[a.Key] = v
		fmt.Fprintf(&rest, " %s=%s", a.Key, v)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	var line string
	switch r.Message {
	case MsgReady:
		line = "starting up, listening on " + kv["interface"]
	case knock.NoteProgress:
		line = kv["src"] + ": " + kv["client"] + ": Stage " + kv["stage"]
	case MsgGranted:
		if kv["language"] != string(policy.Door) {
			return nil
		}
		line = kv["src"] + ": " + kv["client"] + ": OPEN SESAME"
	case command.Message("start", command.Ran), command.Message("stop", command.Ran),
		command.Message("start", command.Failed), command.Message("stop", command.Failed):
		line = kv["door"] + ": running command: " + kv["command"]
	case MsgStopped:
		line = "shutting down"
	default:
		// Tools that parse knockd's log (fail2ban filters, monitoring)
		// must see knockd's lines only; postern's own lines go to stderr.
		return nil
	}
	if h.stamp {
		line = r.Time.Format("[2006-01-02 15:04] ") + line
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, line+"\n")
	return err
}

// printable escapes what a line-oriented log must not carry: control
// characters (a newline would forge a line), terminal escapes, invalid
// UTF-8. Text from packets (an fwknop username, a door detail) reaches
// these sinks.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *lineHandler) WithGroup(string) slog.Handler { return h }
