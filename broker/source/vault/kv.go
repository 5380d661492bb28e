package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// kvEntry is the last value read for a KV reference, kept so that a poll that finds the same
// current_version in the metadata does not read the data again (for a while: see
// kvDataEvery).
type kvEntry struct {
	secret  *source.Secret
	version int64
	usedAt  time.Time
	readAt  time.Time // when the data was last read
	served  int       // fetches answered from the metadata check since readAt
}

type kvMetadata struct {
	Version      json.Number `json:"version"`
	DeletionTime string      `json:"deletion_time"`
	Destroyed    bool        `json:"destroyed"`
}

type kvV2Data struct {
	Data     json.RawMessage `json:"data"`
	Metadata *kvMetadata     `json:"metadata"`
}

func (m *kvMetadata) deleted() bool { return m != nil && (m.DeletionTime != "" || m.Destroyed) }

const (
	// kvIdle is how long a KV value nobody asked for stays cached here.
	kvIdle = time.Hour

	// A metadata read proves only that the version did not change, not that the daemon may
	// still read the data: a policy can grant metadata but no longer data. So a cached value
	// is re-read from the data endpoint on every kvDataEvery-th fetch, and whenever it was
	// read more than kvDataMaxAge ago, whichever comes first; a 403 on that read is
	// authoritative (ErrForbidden: the value is dropped here and purged by the broker). A
	// data-read revocation therefore takes effect within kvDataEvery polls or kvDataMaxAge.
	kvDataEvery  = 10
	kvDataMaxAge = 10 * time.Minute

	// kvMetaRetry is how long a mount whose metadata answered 403 is polled through its data
	// only; then the metadata is tried again (the policy may have been widened).
	kvMetaRetry = 10 * time.Minute
)

func (s *Source) fetchKVv2(ctx context.Context, ref string, spec vaultref.Spec) (*source.Secret, error) {
	now := s.clock.Now()
	s.mu.Lock()
	cached := s.kv[ref]
	retryAt, denied := s.metaDenied[spec.Mount]
	metaOK := !denied || !now.Before(retryAt)
	dataDue := cached != nil && (cached.served+1 >= kvDataEvery || now.Sub(cached.readAt) >= kvDataMaxAge)
	s.mu.Unlock()

	if cached != nil && metaOK && !dataDue {
		sec, err := s.checkKVv2Metadata(ctx, spec, cached)
		if err != nil || sec != nil {
			if err != nil && isAuthoritative(err) {
				s.dropKV(ref)
			} else if sec != nil {
				s.touchKV(ref, now)
			}
			return sec, err
		}
	}

	q := url.Values{}
	if spec.Version > 0 {
		q.Set("version", strconv.FormatInt(spec.Version, 10))
	}
	resp, err := s.do(ctx, call{class: "kv-read", method: http.MethodGet, path: spec.Mount + "/data/" + spec.Path, query: q, ns: s.nsOf(spec)})
	if err != nil {
		err = s.kvError(ctx, spec, err)
		if isAuthoritative(err) {
			s.dropKV(ref)
		}
		return nil, err
	}
	var body kvV2Data
	if err := json.Unmarshal(nonNull(resp.Data), &body); err != nil || body.Metadata == nil {
		s.diagnoseMount(ctx, spec)
		return nil, fmt.Errorf("%w: kv-v2 read of %s/%s did not return kv-v2 data", source.ErrNotFound, spec.Mount, spec.Path)
	}
	if body.Metadata.deleted() {
		s.dropKV(ref)
		return nil, fmt.Errorf("%w: %s/%s", source.ErrDeleted, spec.Mount, spec.Path)
	}
	data, dropped, err := decodeData(body.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s/%s: %w", source.ErrUnavailable, spec.Mount, spec.Path, err)
	}
	s.warnDropped(spec, dropped)
	version, _ := body.Metadata.Version.Int64()
	sec := &source.Secret{Data: data, Version: strconv.FormatInt(version, 10)}
	s.mu.Lock()
	s.kv[ref] = &kvEntry{secret: sec.Clone(), version: version, usedAt: now, readAt: now}
	s.mu.Unlock()
	return sec, nil
}

// checkKVv2Metadata returns the cached secret when the metadata says it is still current, nil
// when the data must be read again, or an error.
func (s *Source) checkKVv2Metadata(ctx context.Context, spec vaultref.Spec, cached *kvEntry) (*source.Secret, error) {
	resp, err := s.do(ctx, call{class: "kv-metadata", method: http.MethodGet, path: spec.Mount + "/metadata/" + spec.Path, ns: s.nsOf(spec)})
	switch {
	case errors.Is(err, source.ErrForbidden):
		// Reading data but not metadata is a legitimate policy: poll the data instead, and
		// let the data read decide whether this is a real denial.
		s.mu.Lock()
		s.metaDenied[spec.Mount] = s.clock.Now().Add(kvMetaRetry)
		s.mu.Unlock()
		s.log.Info("kv-v2 metadata not readable; polling the data instead", slog.String("mount", spec.Mount),
			slog.Duration("retry_metadata_after", kvMetaRetry))
		return nil, nil
	case errors.Is(err, source.ErrNotFound):
		// The secret existed (it is cached): all versions and the metadata were deleted.
		return nil, fmt.Errorf("%w: %s/%s: metadata deleted", source.ErrDeleted, spec.Mount, spec.Path)
	case err != nil:
		return nil, err
	}
	s.mu.Lock()
	delete(s.metaDenied, spec.Mount) // readable again
	s.mu.Unlock()
	var meta struct {
		CurrentVersion json.Number            `json:"current_version"`
		Versions       map[string]*kvMetadata `json:"versions"`
	}
	if err := json.Unmarshal(nonNull(resp.Data), &meta); err != nil {
		return nil, nil
	}
	watched := cached.version
	if spec.Version == 0 {
		cur, err := meta.CurrentVersion.Int64()
		if err != nil || cur != cached.version {
			return nil, nil // changed (or unreadable): read the data
		}
	}
	if v := meta.Versions[strconv.FormatInt(watched, 10)]; v.deleted() {
		return nil, fmt.Errorf("%w: %s/%s", source.ErrDeleted, spec.Mount, spec.Path)
	}
	return cached.secret.Clone(), nil
}

// kvError refines an error of a KV v2 data read: a 404 whose body carries deletion_time or
// destroyed is a deletion, not a missing secret.
func (s *Source) kvError(ctx context.Context, spec vaultref.Spec, err error) error {
	var ce *callError
	if !errors.As(err, &ce) || ce.status != http.StatusNotFound {
		return err
	}
	var env struct {
		Data     *kvV2Data `json:"data"`
		Warnings []string  `json:"warnings"`
	}
	if json.Unmarshal(ce.body, &env) == nil && env.Data != nil && env.Data.Metadata.deleted() {
		return fmt.Errorf("%w: %s/%s", source.ErrDeleted, spec.Mount, spec.Path)
	}
	s.diagnoseMount(ctx, spec)
	return err
}

func (s *Source) fetchKVv1(ctx context.Context, ref string, spec vaultref.Spec) (*source.Secret, error) {
	resp, err := s.do(ctx, call{class: "kv-read", method: http.MethodGet, path: spec.Mount + "/" + spec.Path, ns: s.nsOf(spec)})
	if err != nil {
		var ce *callError
		if errors.As(err, &ce) && ce.status == http.StatusNotFound {
			s.diagnoseMount(ctx, spec)
		}
		return nil, err
	}
	data, dropped, err := decodeData(resp.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s/%s: %w", source.ErrUnavailable, spec.Mount, spec.Path, err)
	}
	s.warnDropped(spec, dropped)
	return &source.Secret{Data: data, Version: contentVersion(s.versionKey, data)}, nil
}

// diagnoseMount explains a 404 that comes from a grant naming the wrong KV version: it asks
// Vault (sys/internal/ui/mounts, readable by any token) what the mount is, and logs a fix.
func (s *Source) diagnoseMount(ctx context.Context, spec vaultref.Spec) {
	resp, err := s.do(ctx, call{class: "mount-lookup", method: http.MethodGet, path: "sys/internal/ui/mounts/" + spec.Mount, ns: s.nsOf(spec)})
	if err != nil {
		return
	}
	var m struct {
		Type    string            `json:"type"`
		Path    string            `json:"path"`
		Options map[string]string `json:"options"`
	}
	if json.Unmarshal(nonNull(resp.Data), &m) != nil || m.Type != "kv" {
		return
	}
	actual := vaultref.KVv1
	if m.Options["version"] == "2" {
		actual = vaultref.KVv2
	}
	if strings.TrimSuffix(m.Path, "/") == spec.Mount && actual != spec.Engine {
		s.log.Warn("grant names the wrong kv engine version for this mount",
			slog.String("mount", spec.Mount), slog.String("grant_engine", string(spec.Engine)), slog.String("mount_engine", string(actual)))
	}
}

func (s *Source) warnDropped(spec vaultref.Spec, n int) {
	if n > 0 {
		s.log.Warn("vault secret has keys that are not valid file names; they are not delivered",
			slog.String("mount", spec.Mount), slog.String("path", spec.Path), slog.Int("dropped_keys", n))
	}
}

func (s *Source) dropKV(ref string) {
	s.mu.Lock()
	delete(s.kv, ref)
	s.mu.Unlock()
}

// touchKV records a fetch answered from the cache after a metadata check.
func (s *Source) touchKV(ref string, now time.Time) {
	s.mu.Lock()
	if e := s.kv[ref]; e != nil {
		e.usedAt = now
		e.served++
	}
	s.mu.Unlock()
}

func isAuthoritative(err error) bool {
	return errors.Is(err, source.ErrNotFound) || errors.Is(err, source.ErrDeleted) || errors.Is(err, source.ErrForbidden)
}

func nonNull(raw json.RawMessage) json.RawMessage {
	if len(bytes.TrimSpace(raw)) == 0 {
		return json.RawMessage("null")
	}
	return raw
}
