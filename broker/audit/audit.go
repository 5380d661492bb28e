package audit

import (
	"context"
	"log/slog"
	"time"
)

// Kind is the type of an audited event.
type Kind string

// Event kinds.
const (
	KindAuthentication Kind = "authentication"
	KindDecision       Kind = "decision"
	KindDelivery       Kind = "delivery"
	KindRevocation     Kind = "revocation"
	KindAdmin          Kind = "admin"
)

// Outcome is the result of an audited event.
type Outcome string

// Outcomes.
const (
	OutcomeAllow Outcome = "allow"
	OutcomeDeny  Outcome = "deny"
	OutcomeError Outcome = "error"
)

// Event is one audited fact. No field may hold a token or a secret value.
type Event struct {
	Time           time.Time
	Kind           Kind
	Outcome        Outcome
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	SPIFFEID       string
	Secret         string
	Version        string
	Delivery       string
	Grant          string
	Reason         string
}

// Recorder receives audit events.
type Recorder interface {
	Record(ctx context.Context, ev Event)
}

// SlogRecorder writes each event as one log record with the message "audit".
type SlogRecorder struct {
	log *slog.Logger
}

// NewSlogRecorder returns a Recorder writing to log.
func NewSlogRecorder(log *slog.Logger) *SlogRecorder { return &SlogRecorder{log: log} }

// Record implements Recorder.
func (r *SlogRecorder) Record(ctx context.Context, ev Event) {
	attrs := []slog.Attr{
		slog.String("kind", string(ev.Kind)),
		slog.String("outcome", string(ev.Outcome)),
	}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	add("namespace", ev.Namespace)
	add("service_account", ev.ServiceAccount)
	add("pod", ev.PodName)
	add("pod_uid", ev.PodUID)
	add("spiffe_id", ev.SPIFFEID)
	add("secret", ev.Secret)
	add("version", ev.Version)
	add("delivery", ev.Delivery)
	add("grant", ev.Grant)
	add("reason", ev.Reason)
	r.log.LogAttrs(ctx, slog.LevelInfo, "audit", slog.Any("audit", slog.GroupValue(attrs...)))
}

// Discard is a Recorder that drops every event (tests and benchmarks).
type Discard struct{}

// Record implements Recorder.
func (Discard) Record(context.Context, Event) {}
