package shim

import (
	"context"
	"log/slog"
	"strings"

	"github.com/containerd/ttrpc"
)

// containerd, with tracing on, sends a request's W3C trace context in the
// ttrpc metadata (key "traceparent": version-traceid-spanid-flags). The
// shim puts its trace and span IDs on the log lines of that request, so
// that a slow Create in a trace can be found in the log; no OpenTelemetry
// SDK is linked for that.

type logKey struct{}

// withTrace returns ctx carrying log, with the request's trace IDs if
// containerd sent any.
func withTrace(ctx context.Context, log *slog.Logger) context.Context {
	if values, ok := ttrpc.GetMetadata(ctx); ok {
		if tp, _ := values.Get("traceparent"); len(tp) > 0 {
			if trace, span, ok := parseTraceparent(tp[0]); ok {
				log = log.With("trace_id", trace, "span_id", span)
			}
		}
	}
	return context.WithValue(ctx, logKey{}, log)
}

// logFrom is the logger of a request's context, or fallback.
func logFrom(ctx context.Context, fallback *slog.Logger) *slog.Logger {
	if l, ok := ctx.Value(logKey{}).(*slog.Logger); ok {
		return l
	}
	return fallback
}

// parseTraceparent splits a version 00 traceparent; IDs of all zeros are
// invalid.
func parseTraceparent(tp string) (trace, span string, ok bool) {
	parts := strings.Split(tp, "-")
	if len(parts) < 4 || len(parts[0]) != 2 || len(parts[1]) != 32 || len(parts[2]) != 16 {
		return "", "", false
	}
	if !isHex(parts[1]) || !isHex(parts[2]) || strings.Trim(parts[1], "0") == "" || strings.Trim(parts[2], "0") == "" {
		return "", "", false
	}
	return parts[1], parts[2], true
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
