package audit

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Fixed fields of the Events an EventSink creates.
const (
	AnchorEventReason     = "AuditAnchor"
	AnchorEventAction     = "Anchor"
	AnchorEventController = "keywarden.io/audit"
	// AnchorEventLabel marks anchor Events: `kubectl get events.events.k8s.io -l keywarden.io/audit-anchor`.
	AnchorEventLabel = "keywarden.io/audit-anchor"
)

// maxReportingInstance is the apiserver's limit on reportingInstance.
const maxReportingInstance = 128

// EventCreator is the part of the events.k8s.io/v1 client (for one namespace) an EventSink
// calls: create, nothing else, which is all its RBAC should allow.
type EventCreator interface {
	Create(ctx context.Context, ev *eventsv1.Event, opts metav1.CreateOptions) (*eventsv1.Event, error)
}

// EventSink publishes each anchor as a new events.k8s.io/v1 Event in Namespace, the anchor
// record in the AnchorAnnotation. With RBAC that lets the daemon create Events but not update,
// patch or delete them, a compromised node cannot change an anchor once published. Events
// expire (kube-apiserver --event-ttl, 1h by default): collect them, or keep a second sink.
type EventSink struct {
	Events    EventCreator
	Namespace string
}

var _ AnchorSink = (*EventSink)(nil)

// Name implements AnchorSink.
func (*EventSink) Name() string { return "kubernetes-event" }

// PublishAnchor implements AnchorSink.
func (s *EventSink) PublishAnchor(ctx context.Context, a Anchor) error {
	if s.Events == nil || s.Namespace == "" {
		return errors.New("event sink needs a client and a namespace")
	}
	instance := a.Node
	if len(instance) > maxReportingInstance {
		instance = instance[:maxReportingInstance]
	}
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "keywarden-audit-anchor-",
			Namespace:    s.Namespace,
			Labels:       map[string]string{AnchorEventLabel: "true"},
			Annotations:  map[string]string{AnchorAnnotation: string(a.Marshal())},
		},
		EventTime:           metav1.NewMicroTime(a.Time),
		ReportingController: AnchorEventController,
		ReportingInstance:   instance,
		Action:              AnchorEventAction,
		Reason:              AnchorEventReason,
		// An Event must be about an object of its own namespace (or of none, in default and
		// kube-system only); the anchor is about the node's log, which has no object.
		Regarding: corev1.ObjectReference{APIVersion: "v1", Kind: "Namespace", Name: s.Namespace, Namespace: s.Namespace},
		Note:      fmt.Sprintf("audit log of node %.200s: head %d:%s", a.Node, a.Seq, a.Hash),
		Type:      corev1.EventTypeNormal,
	}
	if _, err := s.Events.Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create event: %w", err)
	}
	return nil
}
