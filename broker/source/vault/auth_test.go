package vault

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source"
)

func TestSource_do_tokenRevokedOutOfBandLogsInAgain(t *testing.T) {
	e := newEnv(t, nil)
	e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
	r := ref(t, kv2("a"))
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	// kubelet rotated the projected token meanwhile: the next login must use the new one.
	const rotated = "eyJhbGciOiJSUzI1NiJ9.rotated-daemon-jwt.sig"
	if err := os.WriteFile(e.jwt, []byte(rotated), 0o600); err != nil {
		t.Fatal(err)
	}
	e.f.revokeAllTokens()
	e.f.putKV2("a", map[string]any{"k": "s3cr3t-2"})
	s, err := e.s.Fetch(ctxT(t), r)
	if err != nil || string(s.Data["k"]) != "s3cr3t-2" {
		t.Fatalf("after revocation: %v %v", s, err)
	}
	if n := e.f.count("PUT auth/kubernetes/login"); n != 2 {
		t.Fatalf("logins = %d, want 2", n)
	}
	e.f.mu.Lock()
	jwts := e.f.jwts
	e.f.mu.Unlock()
	if jwts[len(jwts)-1] != rotated {
		t.Fatal("the token file was not re-read before the login")
	}
	if n := e.f.count("GET auth/token/lookup-self"); n != 1 {
		t.Fatalf("lookups = %d, want 1", n)
	}
	if got := e.logs.String(); !strings.Contains(got, "logging in again") {
		t.Fatal("re-login not logged")
	}
}

func TestSource_do_forbiddenWithValidTokenDoesNotLogIn(t *testing.T) {
	e := newEnv(t, nil)
	e.f.forbidden["secret/data/a"] = true
	for range 3 {
		if _, err := e.s.Fetch(ctxT(t), ref(t, kv2("a"))); !errors.Is(err, source.ErrForbidden) {
			t.Fatal(err)
		}
	}
	if n := e.f.count("PUT auth/kubernetes/login"); n != 1 {
		t.Fatalf("logins = %d, want 1", n)
	}
}

func TestSource_Login_refusedBacksOff(t *testing.T) {
	e := newEnv(t, nil)
	if err := os.WriteFile(e.jwt, []byte("bad-jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_, err := e.s.Fetch(ctxT(t), ref(t, kv2("a")))
		if !errors.Is(err, source.ErrUnavailable) || !errors.Is(err, ErrNotLoggedIn) {
			t.Fatalf("err = %v", err)
		}
	}
	if n := e.f.count("PUT auth/kubernetes/login"); n != 1 {
		t.Fatalf("logins = %d, want 1 (then backing off)", n)
	}
	if err := os.WriteFile(e.jwt, []byte(loginJWT), 0o600); err != nil {
		t.Fatal(err)
	}
	e.clock.Step(2 * time.Second)
	e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
	if _, err := e.s.Fetch(ctxT(t), ref(t, kv2("a"))); err != nil {
		t.Fatalf("after backoff: %v", err)
	}
}

func TestSource_Login_missingOrHugeTokenFile(t *testing.T) {
	for name, content := range map[string][]byte{"empty": {}, "huge": make([]byte, maxJWTFile+1)} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			if err := os.WriteFile(e.jwt, content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := e.s.Login(ctxT(t)); !errors.Is(err, source.ErrUnavailable) {
				t.Fatalf("err = %v", err)
			}
			if n := e.f.count("PUT auth/kubernetes/login"); n != 0 {
				t.Fatal("a bad token file reached Vault")
			}
		})
	}
}

func TestSource_Fetch_vaultDownAtStartThenRecovers(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	e := newEnv(t, nil)
	e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
		if down.Load() {
			// Like a closed port: hijack and drop the connection.
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			_ = c.Close()
			return true
		}
		return false
	}
	e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
	if _, err := e.s.Fetch(ctxT(t), ref(t, kv2("a"))); !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(e.logs.String(), "vault is unavailable") {
		t.Fatal("outage not logged")
	}
	down.Store(false)
	e.clock.Step(5 * time.Second) // past the login backoff
	if _, err := e.s.Fetch(ctxT(t), ref(t, kv2("a"))); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if !strings.Contains(e.logs.String(), "vault is available again") {
		t.Fatal("recovery not logged")
	}
}

func TestSource_Run_renewsTokenAndLogsInAtMaxTTL(t *testing.T) {
	e := newEnv(t, nil)
	e.f.tokenTTL = 60
	if err := e.s.Login(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error)
	go func() { done <- e.s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, func() bool { return e.clock.HasWaiters() })
	// Past ⅔ of 60s (+ at most 3s jitter). Stepped again while no renewal came: the waiter
	// seen may be another timer, and on a loaded machine the renewal timer can be armed after
	// the first step.
	for i := 0; i < 20 && e.f.count("POST auth/token/renew-self") < 1; i++ {
		e.clock.Step(45 * time.Second)
		time.Sleep(20 * time.Millisecond)
	}
	if n := e.f.count("POST auth/token/renew-self"); n < 1 {
		t.Fatalf("renewals = %d, want one past ⅔ of the token's TTL", n)
	}

	// The token's max TTL caps the next renewal: the daemon logs in again.
	e.f.mu.Lock()
	e.f.tokenTTL = 10
	e.f.mu.Unlock()
	for i := 0; i < 20 && e.f.count("PUT auth/kubernetes/login") < 2; i++ {
		e.clock.Step(45 * time.Second)
		time.Sleep(20 * time.Millisecond)
	}
	if n := e.f.count("PUT auth/kubernetes/login"); n < 2 {
		t.Fatalf("logins = %d, want a second login after a capped renewal", n)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
