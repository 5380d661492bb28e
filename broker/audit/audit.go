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
	KindRotation       Kind = "rotation"
	KindRevocation     Kind = "revocation"
	KindAdmin          Kind = "admin"
	// KindAudit is about the audit log itself (events dropped because the queue was full).
	KindAudit Kind = "audit"
)

// Outcome is the result of an audited event.
type Outcome string

// Outcomes.
const (
	OutcomeAllow Outcome = "allow"
	OutcomeDeny  Outcome = "deny"
	OutcomeError Outcome = "error"
)

// Event is one audited fact. No field may hold a token or a secret value: every field is a
// name, an identity, a version or a fixed phrase. The JSON form is part of the hash chain of
// the persistent Log, so field names must not change.
type Event struct {
	// Time is when the event happened; the Log stores it as the entry's time (set to the
	// Log's clock when zero).
	Time           time.Time `json:"-"`
	Kind           Kind      `json:"kind"`
	Outcome        Outcome   `json:"outcome"`
	Namespace      string    `json:"namespace,omitempty"`
	ServiceAccount string    `json:"serviceAccount,omitempty"`
	PodName        string    `json:"pod,omitempty"`
	PodUID         string    `json:"podUID,omitempty"`
	SPIFFEID       string    `json:"spiffeID,omitempty"`
	Secret         string    `json:"secret,omitempty"`
	Version        string    `json:"version,omitempty"`
	Delivery       string    `json:"delivery,omitempty"`
	Grant          string    `json:"grant,omitempty"`
	// Action names an admin action ("grant.apply", "rotate", "revoke", ...).
	Action string `json:"action,omitempty"`
	// Actor is who performed an admin action: "admin-socket" or the caller's SPIFFE ID.
	Actor  string `json:"actor,omitempty"`
	Reason string `json:"reason,omitempty"`
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
	add("action", ev.Action)
	add("actor", ev.Actor)
	add("reason", ev.Reason)
	r.log.LogAttrs(ctx, slog.LevelInfo, "audit", slog.Any("audit", slog.GroupValue(attrs...)))
}

// Discard is a Recorder that drops every event (tests and benchmarks).
type Discard struct{}

// Record implements Recorder.
func (Discard) Record(context.Context, Event) {}
