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

// ServiceAccountLookup finds live service accounts.
type ServiceAccountLookup interface {
	// ServiceAccountUID returns the UID of the service account namespace/name if it exists.
	ServiceAccountUID(namespace, name string) (uid string, ok bool)
	// Synced reports whether the lookup has loaded the service accounts at least once.
	Synced() bool
}

// BindingConfig configures a BindingVerifier.
type BindingConfig struct {
	// Verifier verifies the token itself (signature, claims). Required.
	Verifier TokenVerifier
	// Pods knows the pods on this node. Required.
	Pods PodLookup
	// ServiceAccounts knows the service accounts of the cluster. Required.
	ServiceAccounts ServiceAccountLookup
	// NodeName is this daemon's node. Required.
	NodeName string
	// Logger receives binding failures (reasons only). Required.
	Logger *slog.Logger
}

// BindingVerifier accepts a token only when the pod it is bound to exists now and runs on this
// daemon's node, and the service account it names is still the one it was issued to: a token
// stolen from a pod on another node, kept after its pod was deleted, or issued to a service
// account since deleted (grants name accounts, so a new account with the same name would
// otherwise inherit every token of the old one) is refused even while its signature and exp
// are still good.
// The check runs on every call, after the (cacheable) token verification, because pods and
// service accounts come and go within a token's life.
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
	case cfg.ServiceAccounts == nil:
		return nil, errors.New("node binding: service account lookup is required")
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

// Check reports whether w's pod still exists on this node and w's service account still exists
// with the UID in the token. Long-lived streams call it again during their life: a token is
// checked once, but its pod or service account can go away long before its exp.
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
	return b.checkServiceAccount(w)
}

// checkServiceAccount compares the token's service-account UID with the live account's. The
// apiserver puts the UID in every token it issues (and TokenReview answers with it), so a
// workload without one is refused rather than let through unchecked.
func (b *BindingVerifier) checkServiceAccount(w Workload) error {
	if w.ServiceAccountUID == "" {
		return invalid(ReasonInvalidSA)
	}
	uid, ok := b.cfg.ServiceAccounts.ServiceAccountUID(w.Namespace, w.ServiceAccount)
	if !ok {
		if !b.cfg.ServiceAccounts.Synced() {
			return errors.Join(ErrUnavailable, errors.New("service accounts not loaded yet"))
		}
		return invalid(ReasonServiceAccountRecreated)
	}
	if uid != w.ServiceAccountUID {
		return invalid(ReasonServiceAccountRecreated)
	}
	return nil
}
