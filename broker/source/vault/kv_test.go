package vault

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ref(t testing.TB, s vaultref.Spec) string {
	t.Helper()
	r, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func kv2(path string, keys ...string) vaultref.Spec {
	return vaultref.Spec{Engine: vaultref.KVv2, Mount: "secret", Path: path, Keys: keys}
}

func TestSource_Fetch_kvV2(t *testing.T) {
	e := newEnv(t, nil)
	e.f.putKV2("app/db", map[string]any{"username": "app", "password": "s3cr3t-1", "port": 5432, "bad/key": "x"})
	e.f.putKV2("app/db", map[string]any{"username": "app", "password": "s3cr3t-2", "port": 5432})

	s, err := e.s.Fetch(ctxT(t), ref(t, kv2("app/db")))
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Data["password"]) != "s3cr3t-2" || string(s.Data["port"]) != "5432" || s.Version != "2" {
		t.Fatalf("got %v version %s", s.Keys(), s.Version)
	}

	s, err = e.s.Fetch(ctxT(t), ref(t, kv2("app/db", "password")))
	if err != nil || len(s.Data) != 1 || string(s.Data["password"]) != "s3cr3t-2" {
		t.Fatalf("chosen keys: %v %v", s, err)
	}

	pinned := kv2("app/db")
	pinned.Version = 1
	s, err = e.s.Fetch(ctxT(t), ref(t, pinned))
	if err != nil || string(s.Data["password"]) != "s3cr3t-1" || s.Version != "1" {
		t.Fatalf("pinned: %v %v", s, err)
	}
	if _, ok := s.Data["bad/key"]; ok {
		t.Fatal("a key that is not a valid file name was delivered")
	}

	_, err = e.s.Fetch(ctxT(t), ref(t, kv2("app/db", "nope")))
	if !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
}

func TestSource_Fetch_kvV2MetadataChangeDetection(t *testing.T) {
	e := newEnv(t, nil)
	e.f.putKV2("app/api", map[string]any{"token": "s3cr3t-a"})
	r := ref(t, kv2("app/api"))
	for range 3 {
		if _, err := e.s.Fetch(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.f.count("GET secret/data/app/api"); got != 1 {
		t.Fatalf("data reads = %d, want 1 (polls must use metadata)", got)
	}
	if got := e.f.count("GET secret/metadata/app/api"); got != 2 {
		t.Fatalf("metadata reads = %d, want 2", got)
	}
	e.f.putKV2("app/api", map[string]any{"token": "s3cr3t-b"})
	s, err := e.s.Fetch(ctxT(t), r)
	if err != nil || string(s.Data["token"]) != "s3cr3t-b" || s.Version != "2" {
		t.Fatalf("after update: %v %v", s, err)
	}
	if got := e.f.count("GET secret/data/app/api"); got != 2 {
		t.Fatalf("data reads = %d, want 2", got)
	}
}

func TestSource_Fetch_kvV2MetadataForbiddenFallsBackToData(t *testing.T) {
	e := newEnv(t, nil)
	e.f.putKV2("app/x", map[string]any{"k": "s3cr3t"})
	e.f.forbidden["secret/metadata/app/x"] = true
	r := ref(t, kv2("app/x"))
	for range 3 {
		if _, err := e.s.Fetch(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.f.count("GET secret/metadata/app/x"); got != 1 {
		t.Fatalf("metadata reads = %d, want 1 (then remembered as denied)", got)
	}
	if got := e.f.count("GET secret/data/app/x"); got != 3 {
		t.Fatalf("data reads = %d, want 3", got)
	}
}

func TestSource_Fetch_kvV2DataForbiddenWhileMetadataReadableIsPurged(t *testing.T) {
	e := newEnv(t, nil)
	e.f.putKV2("app/x", map[string]any{"k": "s3cr3t"})
	r := ref(t, kv2("app/x"))
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	// The policy change: metadata still readable, data no longer.
	e.f.forbidden["secret/data/app/x"] = true
	polls := 0
	var err error
	for polls < kvDataEvery {
		polls++
		if _, err = e.s.Fetch(ctxT(t), r); err != nil {
			break
		}
	}
	if !errors.Is(err, source.ErrForbidden) {
		t.Fatalf("after %d polls err = %v, want ErrForbidden within %d polls", polls, err, kvDataEvery)
	}
	e.s.mu.Lock()
	cached := e.s.kv[r]
	e.s.mu.Unlock()
	if cached != nil {
		t.Fatal("the forbidden value is still cached")
	}
	if got := e.f.count("GET secret/metadata/app/x"); got == 0 || got >= kvDataEvery {
		t.Fatalf("metadata reads = %d, want between 1 and %d (polls use metadata in between)", got, kvDataEvery-1)
	}
}

func TestSource_Fetch_kvV2OldCachedDataIsReRead(t *testing.T) {
	e := newEnv(t, nil)
	e.f.putKV2("app/x", map[string]any{"k": "s3cr3t"})
	r := ref(t, kv2("app/x"))
	for range 2 {
		if _, err := e.s.Fetch(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	e.f.forbidden["secret/data/app/x"] = true
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatalf("a fresh cached value should be served from the metadata check: %v", err)
	}
	e.clock.Step(kvDataMaxAge)
	if _, err := e.s.Fetch(ctxT(t), r); !errors.Is(err, source.ErrForbidden) {
		t.Fatalf("a value read %s ago was not re-read: err = %v", kvDataMaxAge, err)
	}
}

func TestSource_Fetch_kvV2MetadataDeniedIsRetried(t *testing.T) {
	e := newEnv(t, nil)
	e.f.putKV2("app/x", map[string]any{"k": "s3cr3t"})
	e.f.forbidden["secret/metadata/app/x"] = true
	r := ref(t, kv2("app/x"))
	for range 3 {
		if _, err := e.s.Fetch(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.f.count("GET secret/metadata/app/x"); got != 1 {
		t.Fatalf("metadata reads = %d, want 1", got)
	}
	// The policy is widened; after kvMetaRetry the metadata is tried again and used.
	delete(e.f.forbidden, "secret/metadata/app/x")
	e.clock.Step(kvMetaRetry)
	data := e.f.count("GET secret/data/app/x")
	for range 3 {
		if _, err := e.s.Fetch(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.f.count("GET secret/metadata/app/x"); got < 2 {
		t.Fatalf("metadata reads = %d: the denial never expired", got)
	}
	if got := e.f.count("GET secret/data/app/x"); got > data+1 {
		t.Fatalf("data reads %d → %d: polls do not use the metadata again", data, got)
	}
}

func TestSource_Fetch_errors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(e *env)
		spec  vaultref.Spec
		want  error
		cache bool // fetch once successfully before the fault
	}{
		{"not found", nil, kv2("none"), source.ErrNotFound, false},
		{"deleted", func(e *env) { e.f.kv2["d"].deleted[1] = true }, kv2("d"), source.ErrDeleted, false},
		{"destroyed", func(e *env) { e.f.kv2["d"].destroyed[1] = true }, kv2("d"), source.ErrDeleted, false},
		{"deleted while cached", func(e *env) { e.f.kv2["d"].deleted[1] = true }, kv2("d"), source.ErrDeleted, true},
		{"metadata deleted while cached", func(e *env) { delete(e.f.kv2, "d") }, kv2("d"), source.ErrDeleted, true},
		{"forbidden by policy", func(e *env) { e.f.forbidden["secret/data/d"] = true }, kv2("d"), source.ErrForbidden, false},
		{"forbidden after policy change", func(e *env) {
			e.f.forbidden["secret/data/d"] = true
			e.f.forbidden["secret/metadata/d"] = true
		}, kv2("d"), source.ErrForbidden, true},
		{"sealed", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool { vaultError(w, 503); return true }
		}, kv2("d"), source.ErrUnavailable, false},
		{"sealed mid-run", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool { vaultError(w, 503); return true }
		}, kv2("d"), source.ErrUnavailable, true},
		{"internal error", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool { vaultError(w, 500); return true }
		}, kv2("d"), source.ErrUnavailable, false},
		{"kv-v2 mount read as kv-v1", nil, vaultref.Spec{Engine: vaultref.KVv1, Mount: "secret", Path: "d"}, source.ErrNotFound, false},
		{"kv-v1 mount read as kv-v2", nil, vaultref.Spec{Engine: vaultref.KVv2, Mount: "kv1", Path: "d"}, source.ErrNotFound, false},
		{"oversized response", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "secret/") {
					writeJSON(w, 200, map[string]any{"data": map[string]any{"data": map[string]any{"k": strings.Repeat("x", 4096)}, "metadata": map[string]any{"version": 1}}})
					return true
				}
				return false
			}
		}, kv2("d"), source.ErrUnavailable, false},
		{"negative lease duration", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "secret/") {
					writeJSON(w, 200, map[string]any{"lease_duration": -5, "data": map[string]any{"data": map[string]any{"k": "v"}, "metadata": map[string]any{"version": 1}}})
					return true
				}
				return false
			}
		}, kv2("d"), source.ErrUnavailable, false},
		{"lease duration that overflows a time.Duration", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "secret/") {
					writeJSON(w, 200, map[string]any{"lease_duration": int64(1) << 40, "data": map[string]any{"data": map[string]any{"k": "v"}, "metadata": map[string]any{"version": 1}}})
					return true
				}
				return false
			}
		}, kv2("d"), source.ErrUnavailable, false},
		{"truncated body", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "secret/") {
					w.Header().Set("Content-Type", "application/json")
					w.Header().Set("Content-Length", "200")
					w.WriteHeader(200)
					_, _ = w.Write([]byte(`{"data": {"data": {"k": "v"`))
					return true
				}
				return false
			}
		}, kv2("d"), source.ErrUnavailable, false},
		{"slow response", func(e *env) {
			e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "secret/") {
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
					return true
				}
				return false
			}
		}, kv2("d"), source.ErrUnavailable, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				c.MaxResponseBytes = 2048
				c.RequestTimeout = 300 * time.Millisecond
			})
			e.f.putKV2("d", map[string]any{"k": "s3cr3t"})
			e.f.kv1["d2"] = map[string]any{"k": "s3cr3t"}
			r := ref(t, tt.spec)
			if tt.cache {
				if _, err := e.s.Fetch(ctxT(t), r); err != nil {
					t.Fatal(err)
				}
			}
			if tt.setup != nil {
				e.f.mu.Lock()
				tt.setup(e)
				e.f.mu.Unlock()
			}
			_, err := e.s.Fetch(ctxT(t), r)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), vaultErrText) {
				t.Fatalf("error carries Vault's text: %v", err)
			}
		})
	}
}

func TestSource_Fetch_engineMismatchIsExplained(t *testing.T) {
	e := newEnv(t, nil)
	_, err := e.s.Fetch(ctxT(t), ref(t, vaultref.Spec{Engine: vaultref.KVv2, Mount: "kv1", Path: "d"}))
	if !errors.Is(err, source.ErrNotFound) {
		t.Fatal(err)
	}
	if !strings.Contains(e.logs.String(), "wrong kv engine version") || !strings.Contains(e.logs.String(), `"mount_engine":"kv-v1"`) {
		t.Fatalf("no explanation in logs:\n%s", e.logs.String())
	}
}

func TestSource_Fetch_oversizedResponseIsCounted(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxResponseBytes = 1024 })
	e.f.putKV2("big", map[string]any{"k": strings.Repeat("y", 8192)})
	_, err := e.s.Fetch(ctxT(t), ref(t, kv2("big")))
	var ce *callError
	if !errors.Is(err, source.ErrUnavailable) || !errors.As(err, &ce) || ce.reason != "response too large" {
		t.Fatalf("err = %v", err)
	}
}

func TestSource_Fetch_kvV1(t *testing.T) {
	e := newEnv(t, nil)
	e.f.kv1["app"] = map[string]any{"a": "s3cr3t-1"}
	r := ref(t, vaultref.Spec{Engine: vaultref.KVv1, Mount: "kv1", Path: "app"})
	s1, err := e.s.Fetch(ctxT(t), r)
	if err != nil || string(s1.Data["a"]) != "s3cr3t-1" {
		t.Fatal(s1, err)
	}
	s2, _ := e.s.Fetch(ctxT(t), r)
	if s1.Version != s2.Version {
		t.Fatal("same data, different versions")
	}
	e.f.mu.Lock()
	e.f.kv1["app"] = map[string]any{"a": "s3cr3t-2"}
	e.f.mu.Unlock()
	s3, _ := e.s.Fetch(ctxT(t), r)
	if s3.Version == s1.Version || string(s3.Data["a"]) != "s3cr3t-2" {
		t.Fatal("change not detected")
	}
}

func TestSource_Fetch_invalidRef(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := e.s.Fetch(ctxT(t), "engine=kv-v2&mount=secret&path=a%2F..%2Fsys"); !errors.Is(err, source.ErrInvalidRef) {
		t.Fatal(err)
	}
	if n := e.f.count("PUT auth/kubernetes/login"); n != 0 {
		t.Fatalf("an invalid reference reached Vault (%d logins)", n)
	}
}
