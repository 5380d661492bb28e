package identity

import (
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Workload is the verified identity of a caller, taken from its token.
type Workload struct {
	Issuer  string // iss
	Subject string // sub: system:serviceaccount:<ns>:<sa>

	Namespace         string // kubernetes.io.namespace
	ServiceAccount    string // kubernetes.io.serviceaccount.name
	ServiceAccountUID string // kubernetes.io.serviceaccount.uid

	// PodName and PodUID are empty only when the verifier does not require
	// a pod binding and the token has none.
	PodName, PodUID string
	// NodeName and NodeUID are empty when the issuer does not add the node
	// claim (Kubernetes before 1.30).
	NodeName, NodeUID string

	Audiences []string // aud, as in the token

	// IssuedAt, NotBefore and ExpiresAt are iat, nbf and exp. TokenReview answers carry no
	// times: there they are read from the token the apiserver vouched for, and NotBefore is
	// zero.
	IssuedAt, NotBefore, ExpiresAt time.Time

	// ID is spiffe://<trust-domain>/ns/<namespace>/sa/<service account>.
	ID spiffeid.ID
}

// LogValue implements slog.LogValuer with the fields useful in logs.
// A Workload holds no secret, but logging it whole would be noisy.
func (w Workload) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("spiffe_id", w.ID.String()),
		slog.String("namespace", w.Namespace),
		slog.String("service_account", w.ServiceAccount),
		slog.String("pod", w.PodName),
		slog.String("pod_uid", w.PodUID),
		slog.String("node", w.NodeName),
	)
}
