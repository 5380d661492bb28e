package identity

import (
	"context"
	"errors"
	"log/slog"
)

// Pod is what the node binding needs to know about a pod.
type Pod struct {
	Namespace, Name, UID, NodeName, ServiceAccount string
}

// PodLookup finds pods scheduled on this node.
type PodLookup interface {
	// PodByUID returns the pod with that UID if it is known to be scheduled on this node.
	PodByUID(uid string) (Pod, bool)
	// Synced reports whether the lookup has loaded the node's pods at least once.
	Synced() bool
}

// BindingConfig configures a BindingVerifier.
type BindingConfig struct {
	// Verifier verifies the token itself (signature, claims). Required.
	Verifier TokenVerifier
	// Pods knows the pods on this node. Required.
	Pods PodLookup
	// NodeName is this daemon's node. Required.
	NodeName string
	// Logger receives binding failures (reasons only). Required.
	Logger *slog.Logger
}

// BindingVerifier accepts a token only when the pod it is bound to exists now and runs on this
// daemon's node: a token stolen from a pod on another node, or kept after its pod was deleted,
// is refused even while its signature and exp are still good. The check runs on every call,
// after the (cacheable) token verification, because pods come and go within a token's life.
type BindingVerifier struct {
	cfg BindingConfig
}

var _ TokenVerifier = (*BindingVerifier)(nil)

// NewBindingVerifier returns a BindingVerifier.
func NewBindingVerifier(cfg BindingConfig) (*BindingVerifier, error) {
	switch {
	case cfg.Verifier == nil:
		return nil, errors.New("node binding: verifier is required")
	case cfg.Pods == nil:
		return nil, errors.New("node binding: pod lookup is required")
	case cfg.NodeName == "":
		return nil, errors.New("node binding: node name is required")
	case cfg.Logger == nil:
		return nil, errors.New("node binding: logger is required")
	}
	return &BindingVerifier{cfg: cfg}, nil
}

// Verify implements TokenVerifier.
func (b *BindingVerifier) Verify(ctx context.Context, tok Token) (Workload, error) {
	w, err := b.cfg.Verifier.Verify(ctx, tok)
	if err == nil {
		err = b.Check(w)
	}
	if err != nil {
		return Workload{}, err
	}
	return w, nil
}

// Check reports whether w's pod still exists on this node. Long-lived streams call it again
// during their life: a token is checked once, but its pod can go away long before its exp.
func (b *BindingVerifier) Check(w Workload) error {
	if w.PodUID == "" {
		return invalid(ReasonNoPodBinding)
	}
	if w.NodeName != "" && w.NodeName != b.cfg.NodeName {
		return invalid(ReasonOtherNode)
	}
	pod, ok := b.cfg.Pods.PodByUID(w.PodUID)
	if !ok {
		if !b.cfg.Pods.Synced() {
			return errors.Join(ErrUnavailable, errors.New("pods of this node not loaded yet"))
		}
		return invalid(ReasonPodNotOnNode)
	}
	if pod.NodeName != b.cfg.NodeName {
		return invalid(ReasonPodNotOnNode)
	}
	if pod.Namespace != w.Namespace || pod.Name != w.PodName || (pod.ServiceAccount != "" && pod.ServiceAccount != w.ServiceAccount) {
		return invalid(ReasonPodMismatch)
	}
	return nil
}
