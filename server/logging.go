package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"strings"
	"sync"
	"time"

	"postern/config"
)

// NewLogger returns the daemon's logger: key=value lines on stderr, plus the
// outputs a knockd.conf asks for (LogFile, UseSyslog), so that whatever
// watched knockd's log keeps working. close releases them.
func NewLogger(cfg *config.Config, stderr io.Writer, level slog.Level) (log *slog.Logger, close func(), err error) {
	handlers := []slog.Handler{slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})}
	var closers []io.Closer
	close = func() {
		for _, c := range closers {
			c.Close()
		}
	}
	if k := cfg.Knockd; k != nil {
		if k.LogFile != "" {
			f, err := os.OpenFile(k.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
			if err != nil {
				return nil, close, fmt.Errorf("%s: LogFile: %w", k.Path, err)
			}
			closers = append(closers, f)
			handlers = append(handlers, &lineHandler{mu: new(sync.Mutex), w: f, stamp: true})
		}
		if k.UseSyslog {
			w, err := syslog.New(syslog.LOG_NOTICE|syslog.LOG_USER, "postern")
			if err != nil {
				// knockd carries on without syslog too; say so once.
				handlers[0].Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelWarn,
					"UseSyslog: no syslog daemon; logging to stderr only", 0))
			} else {
				closers = append(closers, w)
				handlers = append(handlers, &lineHandler{mu: new(sync.Mutex), w: w})
			}
		}
	}
	return slog.New(slog.NewMultiHandler(handlers...)), close, nil
}

// lineHandler writes knockd's log lines: "[YYYY-MM-DD HH:MM] 198.18.0.2:
// openSSH: Stage 1", "…: OPEN SESAME", "openSSH: running command: …" (the
// stamp is left out for syslog, which adds its own), so tools that watch
// knockd's log keep working. Other records become "message key=value…".
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
		kv[a.Key] = a.Value.String()
		fmt.Fprintf(&rest, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	var line string
	switch r.Message {
	case "ready":
		line = "starting up, listening on " + kv["interface"]
	case "knock progress":
		line = kv["src"] + ": " + kv["door"] + ": Stage " + kv["stage"]
	case "door opened":
		line = kv["src"] + ": " + kv["door"] + ": OPEN SESAME"
	case "start command ran", "stop command ran", "start command failed", "stop command failed":
		line = kv["door"] + ": running command: " + kv["command"]
	default:
		if r.Level < slog.LevelInfo {
			return nil
		}
		line = r.Message + rest.String()
	}
	if h.stamp {
		line = r.Time.Format("[2006-01-02 15:04] ") + line
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, line+"\n")
	return err
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *lineHandler) WithGroup(string) slog.Handler { return h }
