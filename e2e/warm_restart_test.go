//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
)

// TestWarmRestart_vaultDown: pods hold volumes with a KV secret and a database credential
// (30 s TTL) and call GetSecret; Vault is frozen (SIGSTOP), the daemon is killed with SIGKILL
// and started again on the same data directory. The restarted daemon has only node.db: it
// serves the same values to GetSecret and keeps the volumes' files until each value's expiry
// (the lease's, and for the KV value rotation.maxStale after Vault last confirmed it), then
// answers Unavailable saying the value expired and Vault cannot be reached, never an expired
// value. A caller without a grant is refused all along. Once Vault resumes, a new credential
// is served and written to the volumes.
func TestWarmRestart_vaultDown(t *testing.T) {
	const (
		poll     = time.Second
		maxStale = 30 * time.Second
		dbTTL    = 30 * time.Second
	)
	e := startCSIVault(t, csiVaultOptions{withPostgres: true, dbTTL: dbTTL, dbMaxTTL: 10 * time.Minute, pollInterval: poll,
		maxStale: maxStale, requestTimeout: 2 * time.Second, logLevel: "info"})
	const kvToken = "warm-restart-kv-token-1"
	e.putKV(t, "app/api", map[string]any{"token": kvToken})
	pods, targets := e.publishPods(t, 2, map[string]string{"secrets": "api,db"})
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), kvToken)
	}
	sock := filepath.Join(e.d.Dir, "kw.sock")
	newClients := func() []*client.Client {
		var cs []*client.Client
		for _, pod := range pods {
			c, err := client.New(sock, client.WithToken(e.kl.PodToken(t, pod, framework.DefaultAudience).Token))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			cs = append(cs, c)
		}
		return cs
	}
	clients := newClients()
	db, err := clients[0].Get(ctx(t), "db")
	if err != nil {
		t.Fatalf("get db: %v", err)
	}
	user, pass := string(db.Data["username"]), string(db.Data["password"])
	remember(user, pass)
	if db.ExpiresAt.IsZero() {
		t.Fatal("the database credential has no expiry")
	}
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "db/password"), pass)
	}

	// Read again just before the pause, in case the lease was renewed meanwhile.
	if db, err = clients[0].Get(ctx(t), "db"); err != nil || string(db.Data["password"]) != pass {
		t.Fatalf("get db before the outage: %v", err)
	}
	// Vault frozen, then the daemon killed and restarted: every value it serves now comes
	// from node.db.
	if err := e.vault.Process.Pause(); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = e.vault.Process.Resume()
		}
	})
	e.d.Process.Kill()
	if exited, err := e.d.Process.Exited(); !exited || err == nil {
		t.Fatalf("the daemon did not die of SIGKILL: exited=%v %v", exited, err)
	}
	e.d.Restart(t)
	restartedAt := time.Now()
	if log := e.d.Process.Log(); !strings.Contains(log, "last values of cached secrets restored") {
		t.Fatal("the restarted daemon did not restore the last values")
	}
	clients = newClients()
	other := e.kl.CreatePod(t, e.ns, "other")
	stranger, err := client.New(sock, client.WithToken(e.kl.PodToken(t, other, framework.DefaultAudience).Token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stranger.Close() })

	// The KV value was last confirmed before the pause, and recorded at most maxStale/8
	// earlier: it may run out from then on, and must have by pausedAt+maxStale.
	kvEarliest, kvLatest := pausedAt.Add(maxStale-maxStale/8-2*poll), pausedAt.Add(maxStale)
	dbExpiry := db.ExpiresAt
	end := maxTime(kvLatest, dbExpiry).Add(5 * time.Second)
	type tally struct{ served, unavailable int }
	counts := map[string]*tally{"api": {}, "db": {}}
	var fileChecks, refused int
	var firstUnavailable = map[string]time.Time{}
	bad := func(format string, args ...any) { t.Errorf(format, args...) }
	for i := 0; time.Now().Before(end); i++ {
		for _, target := range targets {
			fileChecks++
			// Files are never rewritten while Vault is down: the same values before the
			// expiry and after it (see docs/security.md).
			if got := readFile(filepath.Join(target, "api/token")); got != kvToken {
				bad("a volume's api/token changed to a %d-byte value during the outage", len(got))
			}
			if got := readFile(filepath.Join(target, "db/password")); got != pass {
				bad("a volume's db/password changed to a %d-byte value during the outage", len(got))
			}
		}
		c := clients[i%len(clients)]
		for _, name := range []string{"api", "db"} {
			sent := time.Now()
			gctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			s, err := c.Get(gctx, name)
			cancel()
			until, earliest := dbExpiry, dbExpiry.Add(-time.Second)
			if name == "api" {
				until, earliest = kvLatest, kvEarliest
			}
			switch {
			case err == nil:
				counts[name].served++
				if !sent.Before(until) {
					bad("GetSecret %s served at %v, after its value ran out at %v", name, sent.Format(time.RFC3339Nano), until.Format(time.RFC3339Nano))
				}
				if name == "db" && (string(s.Data["password"]) != pass || s.ExpiresAt.Sub(dbExpiry).Abs() > time.Second) {
					bad("GetSecret db served another value (expires %v) during the outage", s.ExpiresAt)
				}
				if name == "api" && string(s.Data["token"]) != kvToken {
					bad("GetSecret api served another value during the outage")
				}
			case status.Code(err) == codes.Unavailable:
				counts[name].unavailable++
				if _, ok := firstUnavailable[name]; !ok {
					firstUnavailable[name] = sent
				}
				msg := status.Convert(err).Message()
				want := fmt.Sprintf("secret %q: its cached value expired and the source cannot be reached for a new one; try again", name)
				if msg != want {
					bad("GetSecret %s: Unavailable %q, want %q", name, msg, want)
				}
				if sent.Before(earliest) {
					bad("GetSecret %s: Unavailable at %v, before its value ran out (%v)", name, sent.Format(time.RFC3339Nano), earliest.Format(time.RFC3339Nano))
				}
				for _, v := range []string{kvToken, user, pass} {
					if strings.Contains(msg, v) {
						bad("the Unavailable message holds a secret value")
					}
				}
			default:
				bad("GetSecret %s during the outage: %v, want the restored value or Unavailable", name, err)
			}
		}
		if i%10 == 0 {
			gctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_, err := stranger.Get(gctx, "api")
			cancel()
			if status.Code(err) != codes.PermissionDenied {
				bad("a caller without a grant got %v after the restart, want PermissionDenied", err)
			}
			refused++
		}
		time.Sleep(500 * time.Millisecond)
	}
	for name, c := range counts {
		if c.served == 0 || c.unavailable == 0 {
			t.Errorf("GetSecret %s: %d served, %d Unavailable; want both (served until its expiry, Unavailable after)", name, c.served, c.unavailable)
		}
	}

	if err := e.vault.Process.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	resumedAt := time.Now()
	var fresh *client.Secret
	waitFor(t, 2*time.Minute, "a new database credential after Vault resumed", func() bool {
		gctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		s, err := clients[0].Get(gctx, "db")
		if err != nil {
			return false
		}
		fresh = s
		return true
	})
	recovered := time.Since(resumedAt)
	newPass := string(fresh.Data["password"])
	remember(string(fresh.Data["username"]), newPass)
	if newPass == pass || !time.Now().Before(fresh.ExpiresAt) {
		t.Fatalf("after Vault resumed GetSecret db served the old or an expired credential (expires %v)", fresh.ExpiresAt)
	}
	if err := e.pg.CanLogin(ctx(t), string(fresh.Data["username"]), newPass); err != nil {
		t.Fatalf("the credential issued after the outage does not log in: %v", err)
	}
	if s, err := clients[1].Get(ctx(t), "api"); err != nil || string(s.Data["token"]) != kvToken {
		t.Fatalf("GetSecret api after Vault resumed: %v", err)
	}
	var filesAt time.Duration
	for _, target := range targets {
		waitFor(t, 2*time.Minute, "the new credential in "+target, func() bool {
			return readFile(filepath.Join(target, "db/password")) == newPass
		})
		filesAt = max(filesAt, time.Since(resumedAt))
	}
	t.Logf("Vault frozen, daemon killed and restarted %v after the pause; after the restart %d GetSecret api served and %d Unavailable "+
		"(first at pause+%v; bound pause+%v), %d GetSecret db served and %d Unavailable (first at pause+%v; lease expiry pause+%v); "+
		"%d file checks, %d refusals of a caller without a grant; after Vault resumed: a new credential served in %v, in every volume in %v (poll %v)",
		restartedAt.Sub(pausedAt).Round(time.Millisecond), counts["api"].served, counts["api"].unavailable,
		firstUnavailable["api"].Sub(pausedAt).Round(time.Millisecond), maxStale,
		counts["db"].served, counts["db"].unavailable, firstUnavailable["db"].Sub(pausedAt).Round(time.Millisecond),
		dbExpiry.Sub(pausedAt).Round(time.Millisecond), fileChecks, refused, recovered.Round(time.Millisecond),
		filesAt.Round(time.Millisecond), poll)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
