package csi

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keywarden/keywarden/broker/identity"
)

// volumesBucket holds one sealed record per published volume, keyed by volume ID.
const volumesBucket = "csi.volumes"

// record is what survives a restart: enough to find the volume, re-check and keep rotating it.
// It holds no secret value and no token (the verified identity only).
type record struct {
	VolumeID string            `json:"volumeID"`
	Target   string            `json:"target"`
	Request  Request           `json:"request"`
	Pod      PodInfo           `json:"pod"`
	GID      int               `json:"gid"`
	Names    []string          `json:"names"`
	Workload recordWorkload    `json:"workload"`
	Versions map[string]string `json:"versions,omitempty"`
	Revoked  bool              `json:"revoked,omitempty"`
}

type recordWorkload struct {
	Issuer, Subject, Namespace, ServiceAccount, ServiceAccountUID string
	PodName, PodUID, NodeName, NodeUID                            string
	Audiences                                                     []string
	IssuedAt, NotBefore, ExpiresAt                                time.Time
	ID                                                            string
}

func toRecordWorkload(w identity.Workload) recordWorkload {
	r := recordWorkload{Issuer: w.Issuer, Subject: w.Subject, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
		ServiceAccountUID: w.ServiceAccountUID, PodName: w.PodName, PodUID: w.PodUID, NodeName: w.NodeName, NodeUID: w.NodeUID,
		Audiences: w.Audiences, IssuedAt: w.IssuedAt, NotBefore: w.NotBefore, ExpiresAt: w.ExpiresAt}
	if !w.ID.IsZero() {
		r.ID = w.ID.String()
	}
	return r
}

func (r recordWorkload) workload() (identity.Workload, error) {
	w := identity.Workload{Issuer: r.Issuer, Subject: r.Subject, Namespace: r.Namespace, ServiceAccount: r.ServiceAccount,
		ServiceAccountUID: r.ServiceAccountUID, PodName: r.PodName, PodUID: r.PodUID, NodeName: r.NodeName, NodeUID: r.NodeUID,
		Audiences: r.Audiences, IssuedAt: r.IssuedAt, NotBefore: r.NotBefore, ExpiresAt: r.ExpiresAt}
	if r.ID != "" {
		id, err := spiffeid.FromString(r.ID)
		if err != nil {
			return w, fmt.Errorf("stored SPIFFE ID: %w", err)
		}
		w.ID = id
	}
	return w, nil
}
