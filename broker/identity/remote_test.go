package identity

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	clocktesting "k8s.io/utils/clock/testing"
)

// fakeIssuer serves OIDC discovery and a JWKS over TLS, counting requests.
type fakeIssuer struct {
	srv      *httptest.Server
	jwks     atomic.Pointer[jose.JSONWebKeySet]
	jwksHits atomic.Int64
	down     atomic.Bool
	issuer   string
}

func newFakeIssuer(t *testing.T) *fakeIssuer {
	t.Helper()
	f := &fakeIssuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		if f.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": f.issuer, "jwks_uri": f.srv.URL + "/openid/v1/jwks"})
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, _ *http.Request) {
		f.jwksHits.Add(1)
		if f.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(f.jwks.Load())
	})
	f.srv = httptest.NewTLSServer(mux)
	t.Cleanup(f.srv.Close)
	f.issuer = f.srv.URL
	ks := testKeySet(t).JWKS()
	f.jwks.Store(&ks)
	return f
}

func newRemote(t *testing.T, f *fakeIssuer, clk *clocktesting.FakeClock) *RemoteKeySet {
	t.Helper()
	r, err := NewRemoteKeySet(RemoteKeySetConfig{Issuer: f.issuer, HTTPClient: f.srv.Client(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRemoteKeySet_Key_discoveryAndCache(t *testing.T) {
	f := newFakeIssuer(t)
	clk := clocktesting.NewFakeClock(testNow)
	r := newRemote(t, f, clk)
	ctx := context.Background()
	if _, err := r.Key(ctx, testECKid); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Key(ctx, testRSAKid); err != nil {
		t.Fatal(err)
	}
	if f.jwksHits.Load() != 1 {
		t.Fatalf("jwks fetched %d times, want 1", f.jwksHits.Load())
	}
}

func TestRemoteKeySet_Key_unknownKidFloodIsRateLimited(t *testing.T) {
	f := newFakeIssuer(t)
	clk := clocktesting.NewFakeClock(testNow)
	r := newRemote(t, f, clk)
	ctx := context.Background()
	_, _ = r.Key(ctx, testECKid)
	for i := range 1000 {
		if _, err := r.Key(ctx, "made-up-"+strings.Repeat("x", i%7)); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := f.jwksHits.Load(); n != 1 {
		t.Fatalf("1000 unknown kids within the interval caused %d JWKS fetches, want 1 (the initial one)", n)
	}
	clk.Step(11 * time.Second)
	_, _ = r.Key(ctx, "still-unknown")
	if n := f.jwksHits.Load(); n != 2 {
		t.Fatalf("after the interval: %d fetches, want 2", n)
	}
}

func TestRemoteKeySet_Key_rotatedKeyFoundByRefresh(t *testing.T) {
	f := newFakeIssuer(t)
	clk := clocktesting.NewFakeClock(testNow)
	r := newRemote(t, f, clk)
	ctx := context.Background()
	_, _ = r.Key(ctx, testECKid)
	testKeys(t)
	rotated := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &otherECKey.PublicKey, KeyID: "new-kid", Algorithm: "ES256", Use: "sig"}}}
	f.jwks.Store(&rotated)
	clk.Step(11 * time.Second)
	if _, err := r.Key(ctx, "new-kid"); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
}

func TestRemoteKeySet_Key_outage(t *testing.T) {
	f := newFakeIssuer(t)
	f.down.Store(true)
	clk := clocktesting.NewFakeClock(testNow)
	r := newRemote(t, f, clk)
	ctx := context.Background()
	if _, err := r.Key(ctx, testECKid); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("issuer down at start: %v, want ErrUnavailable", err)
	}
	f.down.Store(false)
	clk.Step(11 * time.Second)
	if _, err := r.Key(ctx, testECKid); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	f.down.Store(true)
	clk.Step(time.Hour)
	if _, err := r.Key(ctx, testECKid); err != nil {
		t.Fatalf("issuer down with cached keys: %v, want the cached key", err)
	}
}

func TestRemoteKeySet_fetch_badAnswers(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"other issuer", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"issuer":"https://evil","jwks_uri":"https://evil/jwks"}`))
		}},
		{"http jwks uri", nil},
		{"huge document", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(strings.Repeat(" ", 70<<10))) }},
		{"not json", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>")) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var srv *httptest.Server
			h := tc.handler
			if h == nil {
				h = func(w http.ResponseWriter, _ *http.Request) {
					_, _ = w.Write([]byte(`{"issuer":"` + srv.URL + `","jwks_uri":"http://plain/jwks"}`))
				}
			}
			srv = httptest.NewTLSServer(h)
			defer srv.Close()
			r, err := NewRemoteKeySet(RemoteKeySetConfig{Issuer: srv.URL, HTTPClient: srv.Client(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Key(context.Background(), "k"); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("got %v, want ErrUnavailable", err)
			}
		})
	}
}

func TestNewRemoteKeySet_requiresHTTPS(t *testing.T) {
	_, err := NewRemoteKeySet(RemoteKeySetConfig{Issuer: "http://x", HTTPClient: http.DefaultClient, Logger: slog.Default()})
	if err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("got %v", err)
	}
}

func TestRemoteKeySet_withVerifier_endToEnd(t *testing.T) {
	f := newFakeIssuer(t)
	clk := clocktesting.NewFakeClock(testNow)
	r := newRemote(t, f, clk)
	v := newTestVerifier(t, r, nil)
	if _, err := v.Verify(context.Background(), NewToken(signES(t, validClaims()))); err != nil {
		t.Fatalf("valid token through the remote key set: %v", err)
	}
}

func TestRemoteKeySet_bearerTokenOnlyToConfiguredHosts(t *testing.T) {
	var leaked atomic.Int64
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Add(1)
		}
		ks := testKeySet(t).JWKS()
		_ = json.NewEncoder(w).Encode(ks)
	}))
	defer other.Close()
	var disc *httptest.Server
	disc = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer daemon-token" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": disc.URL, "jwks_uri": other.URL + "/jwks"})
	}))
	defer disc.Close()
	tokFile := t.TempDir() + "/token"
	if err := os.WriteFile(tokFile, []byte("daemon-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	client := disc.Client()
	client.Transport.(*http.Transport).TLSClientConfig.RootCAs.AddCert(other.Certificate())
	r, err := NewRemoteKeySet(RemoteKeySetConfig{Issuer: disc.URL, HTTPClient: client, BearerTokenFile: tokFile, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Key(context.Background(), testECKid); err != nil {
		t.Fatal(err)
	}
	if leaked.Load() != 0 {
		t.Fatal("the daemon's bearer token was sent to a host named only by the discovery document")
	}
}
