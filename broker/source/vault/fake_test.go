package vault

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"

	"github.com/keywarden/keywarden/internal/testlog"
)

// vaultErrText is what the fake puts in every error body; it must never reach a log or error.
const vaultErrText = "vault-internal-detail-7c1e"

// fakeVault is a hand-written, in-memory Vault speaking the HTTP API subset the source uses.
type fakeVault struct {
	t     testing.TB
	srv   *httptest.Server
	clock clock.PassiveClock
	// handler, when set (setHandler), answers instead of serve; it may call serve itself.
	handler atomic.Pointer[http.HandlerFunc]

	mu        sync.Mutex
	role      string
	jwts      []string // every JWT presented at login
	tokens    map[string]bool
	nextID    int
	tokenTTL  int // seconds
	kv2       map[string]*kv2Secret
	kv1       map[string]map[string]any
	forbidden map[string]bool // paths the policy denies
	leases    map[string]*fakeLease
	leaseTTL  int // seconds
	maxTTL    int // seconds, from issue
	renewable bool
	refuse    bool // lease renewals answer 400
	calls     map[string]int
	// namespaces records the X-Vault-Namespace of every call, by "METHOD path".
	namespaces map[string]map[string]bool
	// health is the sys/health answer (unauthenticated).
	health map[string]any
	// approle maps role IDs to their secret ID; wrapped maps single-use wrapping tokens to
	// the secret ID they wrap.
	approle, wrapped map[string]string
	// fault, when set, may answer any request first.
	fault func(w http.ResponseWriter, r *http.Request) bool
}

type kv2Secret struct {
	versions  []map[string]any
	deleted   map[int]bool
	destroyed map[int]bool
}

type fakeLease struct {
	id      string
	issued  time.Time
	expires time.Time
	revoked bool
	user    string
}

func newFakeVault(t testing.TB, c clock.PassiveClock) *fakeVault {
	f := &fakeVault{t: t, clock: c, role: "keywarden", tokens: map[string]bool{}, tokenTTL: 3600,
		kv2: map[string]*kv2Secret{}, kv1: map[string]map[string]any{}, forbidden: map[string]bool{},
		leases: map[string]*fakeLease{}, leaseTTL: 60, maxTTL: 300, renewable: true, calls: map[string]int{},
		namespaces: map[string]map[string]bool{}, approle: map[string]string{}, wrapped: map[string]string{}, health: map[string]any{"initialized": true, "sealed": false, "version": "1.21.0", "enterprise": false}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := f.handler.Load(); h != nil {
			(*h)(w, r)
			return
		}
		f.serve(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// setHandler makes h answer every request from now on, safely while the server runs.
func (f *fakeVault) setHandler(h http.HandlerFunc) { f.handler.Store(&h) }

func (f *fakeVault) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[key]
}

func (f *fakeVault) putKV2(path string, data map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.kv2[path]
	if s == nil {
		s = &kv2Secret{deleted: map[int]bool{}, destroyed: map[int]bool{}}
		f.kv2[path] = s
	}
	s.versions = append(s.versions, data)
}

func (f *fakeVault) revokeAllTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = map[string]bool{}
}

// issueToken answers a login with a new token. f.mu is held.
func (f *fakeVault) issueToken(w http.ResponseWriter) {
	f.nextID++
	tok := fmt.Sprintf("hvs.fake-token-%d", f.nextID)
	f.tokens[tok] = true
	writeJSON(w, 200, map[string]any{"auth": map[string]any{"client_token": tok, "lease_duration": f.tokenTTL, "renewable": true}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func vaultError(w http.ResponseWriter, status int) {
	writeJSON(w, status, map[string]any{"errors": []string{vaultErrText}})
}

func (f *fakeVault) serve(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	f.mu.Lock()
	f.calls[r.Method+" "+path]++
	if f.namespaces[r.Method+" "+path] == nil {
		f.namespaces[r.Method+" "+path] = map[string]bool{}
	}
	f.namespaces[r.Method+" "+path][r.Header.Get("X-Vault-Namespace")] = true
	fault := f.fault
	f.mu.Unlock()
	if fault != nil && fault(w, r) {
		return
	}
	var body map[string]any
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		if len(b) > 0 {
			_ = json.Unmarshal(b, &body)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if path == "sys/health" {
		writeJSON(w, 200, f.health)
		return
	}
	switch path {
	case "auth/approle/login":
		id, _ := body["role_id"].(string)
		if sid, ok := f.approle[id]; !ok || body["secret_id"] != sid {
			vaultError(w, http.StatusBadRequest)
			return
		}
		f.issueToken(w)
		return
	case "sys/wrapping/unwrap":
		id, ok := f.wrapped[r.Header.Get("X-Vault-Token")]
		if !ok {
			vaultError(w, http.StatusBadRequest)
			return
		}
		delete(f.wrapped, r.Header.Get("X-Vault-Token"))
		writeJSON(w, 200, map[string]any{"data": map[string]any{"secret_id": id, "secret_id_accessor": "acc"}})
		return
	}
	if path == "auth/kubernetes/login" || path == "auth/jwt/login" {
		jwt, _ := body["jwt"].(string)
		f.jwts = append(f.jwts, jwt)
		if body["role"] != f.role || jwt == "" || strings.HasPrefix(jwt, "bad") {
			vaultError(w, http.StatusForbidden)
			return
		}
		f.nextID++
		tok := fmt.Sprintf("hvs.fake-token-%d", f.nextID)
		f.tokens[tok] = true
		writeJSON(w, 200, map[string]any{"auth": map[string]any{"client_token": tok, "lease_duration": f.tokenTTL, "renewable": true}})
		return
	}
	if !f.tokens[r.Header.Get("X-Vault-Token")] {
		vaultError(w, http.StatusForbidden)
		return
	}
	switch {
	case path == "auth/token/lookup-self":
		writeJSON(w, 200, map[string]any{"data": map[string]any{"ttl": f.tokenTTL}})
	case path == "auth/token/renew-self":
		writeJSON(w, 200, map[string]any{"auth": map[string]any{"client_token": r.Header.Get("X-Vault-Token"), "lease_duration": f.tokenTTL, "renewable": true}})
	case f.forbidden[path]:
		vaultError(w, http.StatusForbidden)
	case strings.HasPrefix(path, "secret/data/"):
		f.kv2Read(w, r, strings.TrimPrefix(path, "secret/data/"))
	case strings.HasPrefix(path, "secret/metadata/"):
		f.kv2Meta(w, strings.TrimPrefix(path, "secret/metadata/"))
	case strings.HasPrefix(path, "kv1/"):
		d, ok := f.kv1[strings.TrimPrefix(path, "kv1/")]
		if !ok {
			vaultError(w, 404)
			return
		}
		writeJSON(w, 200, map[string]any{"data": d})
	case strings.HasPrefix(path, "secret/"):
		// A v2 mount read as v1.
		writeJSON(w, 404, map[string]any{"errors": []string{}, "warnings": []string{"Invalid path for a versioned K/V secrets engine."}})
	case strings.HasPrefix(path, "sys/internal/ui/mounts/"):
		m := strings.TrimPrefix(path, "sys/internal/ui/mounts/")
		switch m {
		case "secret":
			writeJSON(w, 200, map[string]any{"data": map[string]any{"type": "kv", "path": "secret/", "options": map[string]string{"version": "2"}}})
		case "kv1":
			writeJSON(w, 200, map[string]any{"data": map[string]any{"type": "kv", "path": "kv1/", "options": map[string]string{"version": "1"}}})
		default:
			vaultError(w, 404)
		}
	case strings.HasPrefix(path, "database/creds/"):
		f.nextID++
		id := fmt.Sprintf("database/creds/app/lease-%d", f.nextID)
		now := f.clock.Now()
		f.leases[id] = &fakeLease{id: id, issued: now, expires: now.Add(time.Duration(f.leaseTTL) * time.Second), user: fmt.Sprintf("v-user-%d", f.nextID)}
		writeJSON(w, 200, map[string]any{"lease_id": id, "lease_duration": f.leaseTTL, "renewable": f.renewable,
			"data": map[string]any{"username": f.leases[id].user, "password": fmt.Sprintf("pw-secret-%d", f.nextID)}})
	case path == "sys/leases/renew":
		id, _ := body["lease_id"].(string)
		l := f.leases[id]
		now := f.clock.Now()
		if l == nil || l.revoked || !now.Before(l.expires) || f.refuse || !f.renewable {
			vaultError(w, 400)
			return
		}
		inc, _ := body["increment"].(float64)
		end := now.Add(time.Duration(inc) * time.Second)
		if maxEnd := l.issued.Add(time.Duration(f.maxTTL) * time.Second); end.After(maxEnd) {
			end = maxEnd
		}
		l.expires = end
		writeJSON(w, 200, map[string]any{"lease_id": id, "lease_duration": int(end.Sub(now) / time.Second), "renewable": true})
	case path == "sys/leases/revoke":
		id, _ := body["lease_id"].(string)
		if l := f.leases[id]; l != nil {
			l.revoked = true
		}
		w.WriteHeader(204)
	default:
		vaultError(w, 404)
	}
}

func (f *fakeVault) kv2Read(w http.ResponseWriter, r *http.Request, p string) {
	s := f.kv2[p]
	if s == nil || len(s.versions) == 0 {
		vaultError(w, 404)
		return
	}
	v := len(s.versions)
	if q := r.URL.Query().Get("version"); q != "" {
		v, _ = strconv.Atoi(q)
		if v < 1 || v > len(s.versions) {
			vaultError(w, 404)
			return
		}
	}
	meta := map[string]any{"version": v, "deletion_time": "", "destroyed": s.destroyed[v]}
	if s.deleted[v] {
		meta["deletion_time"] = "2026-01-01T00:00:00Z"
	}
	if s.deleted[v] || s.destroyed[v] {
		writeJSON(w, 404, map[string]any{"errors": []string{}, "data": map[string]any{"data": nil, "metadata": meta}})
		return
	}
	writeJSON(w, 200, map[string]any{"data": map[string]any{"data": s.versions[v-1], "metadata": meta}})
}

func (f *fakeVault) kv2Meta(w http.ResponseWriter, p string) {
	s := f.kv2[p]
	if s == nil {
		vaultError(w, 404)
		return
	}
	versions := map[string]any{}
	for i := range s.versions {
		dt := ""
		if s.deleted[i+1] {
			dt = "2026-01-01T00:00:00Z"
		}
		versions[strconv.Itoa(i+1)] = map[string]any{"deletion_time": dt, "destroyed": s.destroyed[i+1]}
	}
	writeJSON(w, 200, map[string]any{"data": map[string]any{"current_version": len(s.versions), "versions": versions}})
}

// leaseDB is a real node store in a temp dir, for the lease records.
type leaseDB struct{ *store.DB }

func newLeaseDB(t testing.TB) leaseDB {
	t.Helper()
	dir := t.TempDir()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "node.db"), KEK: kek, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return leaseDB{db}
}

// keys counts the records of LeaseBucket under prefix.
func (l leaseDB) keys(prefix string) int {
	items, err := store.NewBucket[json.RawMessage](l.DB, LeaseBucket).Prefix(prefix).List()
	if err != nil {
		panic(err)
	}
	return len(items)
}

type env struct {
	f     *fakeVault
	s     *Source
	clock *testingclock.FakeClock
	logs  *testlog.Buffer
	jwt   string // path of the login token file
	store leaseDB
}

const loginJWT = "eyJhbGciOiJSUzI1NiJ9.daemon-jwt-payload.sig"

func newEnv(t testing.TB, mutate func(*Config)) *env {
	t.Helper()
	c := testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	f := newFakeVault(t, c)
	e := &env{f: f, clock: c, logs: &testlog.Buffer{}, jwt: filepath.Join(t.TempDir(), "token"), store: newLeaseDB(t)}
	if err := os.WriteFile(e.jwt, []byte(loginJWT+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Address: f.srv.URL, Auth: AuthConfig{Method: MethodKubernetes, Role: "keywarden", TokenFile: e.jwt},
		Leases: e.store.DB, Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Clock: c, RequestTimeout: 2 * time.Second, LeaseGrace: 10 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.s = s
	t.Cleanup(func() { e.assertNoLeaks(t) })
	return e
}

// assertNoLeaks fails when a token, the login JWT, a secret value or Vault's error text
// reached the logs.
func (e *env) assertNoLeaks(t testing.TB) {
	logs := e.logs.String()
	for _, bad := range []string{loginJWT, "hvs.fake-token", vaultErrText, "pw-secret-", "s3cr3t"} {
		if strings.Contains(logs, bad) {
			t.Errorf("logs contain %q:\n%s", bad, logs)
		}
	}
}
