package source

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"
)

// Ref names one secret inside one source. It is comparable so the rotation engine can key its
// cache by it: two grants that point at the same Ref share one fetch and one cached value.
type Ref struct {
	// Source is the configured source name, e.g. "local" or "vault".
	Source string
	// Path is the secret's path inside the source.
	Path string
}

// String prints the reference; it never contains secret material.
func (r Ref) String() string { return r.Source + ":" + r.Path }

// Value is secret bytes. It never prints its content: String, GoString, Format and LogValue all
// redact, so a Value that reaches a log line or an error by mistake leaks nothing.
type Value []byte

const redacted = "[REDACTED]"

// String implements fmt.Stringer.
func (Value) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (Value) GoString() string { return redacted }

// Format implements fmt.Formatter so that no verb (%x, %q, %d …) prints the bytes.
func (Value) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (Value) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText keeps encoders (JSON, YAML) from writing the bytes.
func (Value) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Secret is one version of a secret as fetched from a source.
type Secret struct {
	// Data maps each key to its value.
	Data map[string]Value
	// Version changes whenever Data changes.
	Version string
	// ExpiresAt is when the value stops being valid; zero means it does not expire.
	ExpiresAt time.Time
	// RenewAfter is when the value should be fetched again; zero means only on change.
	RenewAfter time.Time
	// LeaseID is the source's lease on a dynamic secret; empty for static secrets.
	LeaseID string
}

// Clone returns a deep copy, so a consumer can never modify the cached value.
func (s *Secret) Clone() *Secret {
	if s == nil {
		return nil
	}
	out := *s
	out.Data = make(map[string]Value, len(s.Data))
	for k, v := range s.Data {
		out.Data[k] = slices.Clone(v)
	}
	return &out
}

// Keys returns the sorted key names.
func (s *Secret) Keys() []string { return slices.Sorted(maps.Keys(s.Data)) }

// Select returns a copy holding only the given keys; an empty list keeps all keys. A key the
// secret does not have is an error, so a grant that names a missing key fails loudly instead of
// delivering a partial secret.
func (s *Secret) Select(keys []string) (*Secret, error) {
	out := s.Clone()
	if len(keys) == 0 {
		return out, nil
	}
	data := make(map[string]Value, len(keys))
	for _, k := range keys {
		v, ok := out.Data[k]
		if !ok {
			return nil, fmt.Errorf("%w: key %q is not in the secret", ErrNotFound, k)
		}
		data[k] = v
	}
	out.Data = data
	return out, nil
}

// LogValue describes the secret without its data.
func (s *Secret) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("version", s.Version),
		slog.Any("keys", s.Keys()),
		slog.Time("expires_at", s.ExpiresAt),
	)
}

// Source is where secrets come from. It is a producer-side interface on purpose: it is the
// extension point with several implementations (local, Vault).
type Source interface {
	// Fetch returns the current value of the secret at path. Errors wrap ErrNotFound,
	// ErrDeleted, ErrForbidden or ErrUnavailable so callers can branch.
	Fetch(ctx context.Context, path string) (*Secret, error)
}

// Notifier is implemented by sources that know when a secret changes (the local store). The
// rotation engine uses it instead of polling.
type Notifier interface {
	// Changes returns a channel that receives the path of every secret that changed, until
	// ctx is done.
	Changes(ctx context.Context) <-chan string
}
