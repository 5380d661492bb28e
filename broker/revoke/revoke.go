package revoke

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
)

// SourceName is the grant source revocations are published as.
const SourceName = "revoked"

// storeBucket holds one Target per revocation, keyed by its Name.
const storeBucket = "revoked"

// Target is what a revocation applies to: Secret alone, or a workload given as Namespace and
// ServiceAccount, or as SPIFFEID.
type Target struct {
	Secret         string `json:"secret,omitempty"`
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	SPIFFEID       string `json:"spiffeID,omitempty"`
}

// Validate checks that t names exactly one thing, with valid names.
func (t Target) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidTarget, fmt.Sprintf(format, args...))
	}
	workload := t.Namespace != "" || t.ServiceAccount != ""
	n := 0
	for _, set := range []bool{t.Secret != "", workload, t.SPIFFEID != ""} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return bad("name a secret, or a workload (namespace and service account, or SPIFFE ID)")
	case n > 1:
		return bad("name only one of: a secret, a namespace and service account, a SPIFFE ID")
	case t.Secret != "":
		if err := grant.ValidateSecretName(t.Secret); err != nil {
			return bad("%v", err)
		}
	case t.SPIFFEID != "":
		if _, err := spiffeid.FromString(t.SPIFFEID); err != nil {
			return bad("SPIFFE ID: %v", err)
		}
	case workload:
		if len(validation.IsDNS1123Label(t.Namespace)) > 0 {
			return bad("namespace must be a DNS-1123 label")
		}
		if len(validation.IsDNS1123Subdomain(t.ServiceAccount)) > 0 {
			return bad("service account must be a DNS-1123 subdomain")
		}
	}
	return nil
}

// Name is the name of the Deny grant that enforces a revocation of t.
func (t Target) Name() string {
	var name string
	switch {
	case t.Secret != "":
		name = "revoked.secret." + t.Secret
	case t.SPIFFEID != "":
		name = "revoked.spiffe." + digest(t.SPIFFEID)
	default:
		name = "revoked.sa." + t.Namespace + "." + t.ServiceAccount
	}
	if len(validation.IsDNS1123Subdomain(name)) > 0 {
		// '_' in a secret name, or too long: fall back to a digest.
		name = "revoked." + digest(name)
	}
	return name
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// Broker is what the Manager needs from the broker.
type Broker interface {
	SourceRefs(name string) []source.Ref
	SecretNames(skip string) []string
	GrantsChanged() <-chan struct{}
}

// Purger drops cached values.
type Purger interface {
	Drop(ref source.Ref) bool
}

// Config configures a Manager.
type Config struct {
	// Broker resolves secret names. Required.
	Broker Broker
	// Purger drops cached values of revoked secrets. Required.
	Purger Purger
	// Apply puts the revocation grants in force (Broker.UpdateGrantSource(SourceName, set)).
	// Required.
	Apply func(*grant.Set) error
	// Logger receives revocation events. Required.
	Logger *slog.Logger
	// DB keeps the revocations across restarts (the daemon's encrypted state store, bucket
	// "revoked"): New loads and applies them, Revoke and Lift write through. Optional: nil
	// keeps them in memory only, and a restart lifts them.
	DB *store.DB
}

// Manager holds the revocations in force.
type Manager struct {
	cfg    Config
	stored store.Bucket[Target] // cfg.DB's revocations

	mu      sync.Mutex
	targets map[string]Target
	names   []string // secret names the workload revocations were built with
}

// New returns a Manager with the revocations kept in cfg.DB, already applied (so call it
// before the broker serves). A stored revocation that does not parse or validate is an error
// (store.ErrCorrupt): the operator must see it rather than have a revocation silently lifted.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.Broker == nil:
		return nil, fmt.Errorf("%w: broker is required", ErrInvalidConfig)
	case cfg.Purger == nil:
		return nil, fmt.Errorf("%w: purger is required", ErrInvalidConfig)
	case cfg.Apply == nil:
		return nil, fmt.Errorf("%w: apply is required", ErrInvalidConfig)
	case cfg.Logger == nil:
		return nil, fmt.Errorf("%w: logger is required", ErrInvalidConfig)
	}
	m := &Manager{cfg: cfg, targets: map[string]Target{}, stored: store.NewBucket[Target](cfg.DB, storeBucket)}
	if cfg.DB == nil {
		return m, nil
	}
	recs, err := m.stored.List()
	if err != nil {
		return nil, fmt.Errorf("load revocations: %w", err)
	}
	if len(recs) == 0 {
		return m, nil
	}
	targets := make(map[string]Target, len(recs))
	for _, r := range recs {
		t := r.Value
		if r.Err != nil {
			return nil, fmt.Errorf("stored revocation %q does not parse: %w", r.Key, store.ErrCorrupt)
		}
		if err := t.Validate(); err != nil || t.Name() != r.Key {
			return nil, fmt.Errorf("stored revocation %q is not valid: %w", r.Key, store.ErrCorrupt)
		}
		targets[r.Key] = t
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.applyLocked(targets); err != nil {
		return nil, fmt.Errorf("apply stored revocations: %w", err)
	}
	cfg.Logger.Info("stored revocations in force", slog.Int("revocations", len(targets)))
	return m, nil
}

// Revoke puts a revocation of t in force and drops the cached values of a revoked secret. It
// returns the revocation's name and how many cached values were dropped.
func (m *Manager) Revoke(t Target) (name string, purged int, err error) {
	if err := t.Validate(); err != nil {
		return "", 0, err
	}
	name = t.Name()
	m.mu.Lock()
	next := maps.Clone(m.targets)
	next[name] = t
	// Stored first, so a revocation in force is never one a restart would lift; undone if
	// the broker refuses it.
	if err := m.persist(name, &t); err != nil {
		m.mu.Unlock()
		return "", 0, err
	}
	if err := m.applyLocked(next); err != nil {
		if _, stored := m.targets[name]; !stored {
			m.unpersist(name, nil)
		}
		m.mu.Unlock()
		return "", 0, err
	}
	m.mu.Unlock()
	if t.Secret != "" {
		for _, ref := range m.cfg.Broker.SourceRefs(t.Secret) {
			if m.cfg.Purger.Drop(ref) {
				purged++
			}
		}
	}
	m.cfg.Logger.Info("revocation in force", slog.String("revocation", name), slog.Int("purged", purged))
	return name, purged, nil
}

// Lift removes the revocation of t.
func (m *Manager) Lift(t Target) (string, error) {
	if err := t.Validate(); err != nil {
		return "", err
	}
	name := t.Name()
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, ok := m.targets[name]
	if !ok {
		return "", fmt.Errorf("%w: %s", ErrNotRevoked, name)
	}
	next := maps.Clone(m.targets)
	delete(next, name)
	if err := m.persist(name, nil); err != nil {
		return "", err
	}
	if err := m.applyLocked(next); err != nil {
		m.unpersist(name, &prev)
		return "", err
	}
	m.cfg.Logger.Info("revocation lifted", slog.String("revocation", name))
	return name, nil
}

// Names returns the names of the revocations in force, sorted.
func (m *Manager) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.targets))
}

// Run re-derives workload revocations whenever the other grant sources change, until ctx is
// done.
func (m *Manager) Run(ctx context.Context) error {
	for {
		// Take the signal before looking, so a change in between is not missed.
		changed := m.cfg.Broker.GrantsChanged()
		m.mu.Lock()
		names := m.cfg.Broker.SecretNames(SourceName)
		if len(m.targets) > 0 && !slices.Equal(names, m.names) {
			if err := m.applyLocked(m.targets); err != nil {
				m.cfg.Logger.Error("revocations could not be re-applied", slog.Any("error", err))
			}
		}
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// persist stores t under name, or deletes name when t is nil.
func (m *Manager) persist(name string, t *Target) error {
	if m.cfg.DB == nil {
		return nil
	}
	if t == nil {
		if err := m.stored.Delete(name); err != nil {
			return fmt.Errorf("save revocations: %w", err)
		}
		return nil
	}
	if err := m.stored.Put(name, *t); err != nil {
		return fmt.Errorf("save revocations: %w", err)
	}
	return nil
}

// unpersist undoes a persist whose change the broker refused: it puts back prev (deletes
// name when prev is nil), logging a failure.
func (m *Manager) unpersist(name string, prev *Target) {
	if err := m.persist(name, prev); err != nil {
		m.cfg.Logger.Error("revocation store not rolled back", slog.String("revocation", name), slog.Any("error", err))
	}
}

// applyLocked builds the Deny grants for targets and puts them in force; on success they
// become the Manager's targets.
func (m *Manager) applyLocked(targets map[string]Target) error {
	names := m.cfg.Broker.SecretNames(SourceName)
	var grants []grant.AccessGrant
	for _, name := range slices.Sorted(maps.Keys(targets)) {
		if g, ok := denyGrant(name, targets[name], names); ok {
			grants = append(grants, g)
		}
	}
	set, err := grant.NewSet(grants)
	if err != nil {
		return fmt.Errorf("build revocation grants: %w", err)
	}
	if err := m.cfg.Apply(set); err != nil {
		return err
	}
	m.targets, m.names = targets, names
	return nil
}

// denyGrant is the grant enforcing one revocation. A workload revocation when no grant names
// any secret has nothing to deny yet (ok false).
func denyGrant(name string, t Target, secretNames []string) (grant.AccessGrant, bool) {
	g := grant.AccessGrant{
		TypeMeta:   metav1.TypeMeta{APIVersion: grant.APIVersion, Kind: grant.Kind},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       grant.AccessGrantSpec{Effect: grant.EffectDeny},
	}
	clause := func(s string) grant.SecretGrant {
		return grant.SecretGrant{Name: s, Source: grant.SecretSource{Local: &grant.LocalSource{Name: s}}}
	}
	switch {
	case t.Secret != "":
		g.Spec.Subjects = []grant.Subject{{Namespace: "*", ServiceAccount: "*"}}
		g.Spec.Secrets = []grant.SecretGrant{clause(t.Secret)}
	default:
		if t.SPIFFEID != "" {
			g.Spec.Subjects = []grant.Subject{{SPIFFEID: t.SPIFFEID}}
		} else {
			g.Spec.Subjects = []grant.Subject{{Namespace: t.Namespace, ServiceAccount: t.ServiceAccount}}
		}
		if len(secretNames) == 0 {
			return g, false
		}
		for _, s := range secretNames {
			g.Spec.Secrets = append(g.Spec.Secrets, clause(s))
		}
	}
	return g, true
}
