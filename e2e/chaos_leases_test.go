//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/e2e/framework"
	"github.com/keywarden/keywarden/internal/chaos"
)

// leaseVersion is the version the daemon gives a leased credential: "lease-" and the first 24
// hex digits of the SHA-256 of its lease id (broker/source/vault).
func leaseVersion(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "lease-" + hex.EncodeToString(sum[:])[:24]
}

// heldLeases is what the daemon's cache holds for the leased Vault references (keywarden
// status): version → reference path.
func heldLeases(t testing.TB, d *framework.Daemon) map[string]string {
	t.Helper()
	out, err := exec.Command(framework.DaemonBinary(t), "status", "-o", "json", "--admin-socket", filepath.Join(d.Dir, "admin.sock")).Output()
	if err != nil {
		t.Fatalf("keywarden status: %v", err)
	}
	var st struct {
		Secrets []struct{ Source, Path, Version string }
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("keywarden status: %v", err)
	}
	held := map[string]string{}
	for _, s := range st.Secrets {
		if s.Source == "vault" && strings.HasPrefix(s.Version, "lease-") {
			held[s.Version] = s.Path
		}
	}
	return held
}

// TestChaos_leaseReissueKill: pods hold their own database credentials (share: Pod) from a
// role whose leases live 6 s and at most 12 s, so the daemon renews every few seconds and
// re-issues when max_ttl nears. Each trial kills the daemon with SIGKILL — at a random moment,
// or within 50 ms after it logged a re-issue (while it records and revokes) — restarts it,
// waits until every pod's credential is held again and the orphan grace has passed, and then
// compares Vault's own lease list under the role's prefix with what the daemon holds. A
// listed lease not held is counted again after the replace grace and a reap: still there, it
// is an orphan, unless the daemon never learnt it (its id is in no log line of the daemon and
// Vault issued it in the second before the kill: the answer was in flight when the process
// died). Those are counted apart and must be gone from Vault at their TTL. 3 trials, or
// CHAOS_TRIALS, or 60 with KEYWARDEN_CHAOS_LONG=1.
func TestChaos_leaseReissueKill(t *testing.T) {
	const pods, ttl, maxTTL, orphanGrace = 4, 6 * time.Second, 12 * time.Second, 2 * time.Second
	def := 3
	if chaos.Long() {
		def = 60
	}
	trials := chaos.Trials(t, def)
	e := startCSIVault(t, csiVaultOptions{withPostgres: true, dbTTL: ttl, dbMaxTTL: maxTTL, extraGrants: podLeaseGrant,
		orphanGrace: orphanGrace, logLevel: "info", tokenTTL: time.Hour})
	_, targets := e.publishPods(t, pods, map[string]string{"secrets": "dbpod"})
	for _, target := range targets {
		waitFor(t, 30*time.Second, "the volume's files", func() bool { return readFile(filepath.Join(target, "dbpod/password")) != "" })
	}
	allHeld := func() map[string]string {
		var held map[string]string
		waitFor(t, 60*time.Second, "every pod's credential held", func() bool {
			held = heldLeases(t, e.d)
			return len(held) >= pods
		})
		return held
	}

	var kills, afterReissue, orphans, inFlight, judged int
	var inFlightIDs []string
	begin := time.Now()
	for trial := range trials {
		// Kill while the daemon renews and re-issues.
		if trial%2 == 1 {
			n := strings.Count(e.d.Process.Log(), "issued a new credential")
			for deadline := time.Now().Add(2 * maxTTL); strings.Count(e.d.Process.Log(), "issued a new credential") == n; {
				if time.Now().After(deadline) {
					t.Fatal("no re-issue within two max_ttl")
				}
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
			afterReissue++
		} else {
			time.Sleep(time.Duration(500+rand.IntN(4000)) * time.Millisecond)
		}
		killedAt := time.Now()
		e.d.Process.Kill()
		kills++
		e.d.Restart(t)
		allHeld()
		time.Sleep(orphanGrace + time.Second)

		// First look: listed but not held.
		first := map[string]bool{}
		held := heldLeases(t, e.d)
		for _, id := range vaultLeases(t, e.vault, leasePrefix) {
			if _, ok := held[leaseVersion(id)]; !ok {
				first[id] = true
			}
		}
		// A replaced lease is revoked after the 500 ms grace, at the next 1 s reap: look again.
		time.Sleep(2 * time.Second)
		held = heldLeases(t, e.d)
		logs := e.d.Logs()
		for _, id := range vaultLeases(t, e.vault, leasePrefix) {
			if _, ok := held[leaseVersion(id)]; ok || !first[id] {
				continue
			}
			judged++
			issued := leaseIssueTime(t, e.vault, id)
			if issued.IsZero() {
				continue // revoked or expired since the list
			}
			if !strings.Contains(logs, id) && !issued.Before(killedAt.Add(-time.Second)) && !issued.After(killedAt) {
				inFlight++
				inFlightIDs = append(inFlightIDs, id)
				t.Logf("trial %d: lease issued %v before the kill, never known to the daemon (in flight at kill)", trial, killedAt.Sub(issued).Round(time.Millisecond))
				continue
			}
			orphans++
			t.Errorf("trial %d: orphaned lease (issued %v before the kill; known to the daemon: %v)", trial, killedAt.Sub(issued).Round(time.Millisecond), strings.Contains(logs, id))
		}
	}
	elapsed := time.Since(begin)
	// The leases in flight at a kill are bounded by their TTL: Vault expires them.
	if len(inFlightIDs) > 0 {
		waitFor(t, maxTTL+10*time.Second, "the in-flight leases to expire", func() bool {
			listed := map[string]bool{}
			for _, id := range vaultLeases(t, e.vault, leasePrefix) {
				listed[id] = true
			}
			for _, id := range inFlightIDs {
				if listed[id] {
					return false
				}
			}
			return true
		})
	}
	reissues := strings.Count(e.d.Logs(), "issued a new credential")
	notes := fmt.Sprintf("%d pods, lease TTL %v/max %v; %d kills (%d within 50 ms after a re-issue was logged), %d re-issues logged; %d listed-not-held after the grace; %d in flight at kill (expired at TTL); %v",
		pods, ttl, maxTTL, kills, afterReissue, reissues, judged, inFlight, elapsed.Round(time.Second))
	chaos.Report(t, chaos.Result{Campaign: "kill -9 during lease issue/re-issue, Vault lease list judge (e2e)", Trials: trials, Faults: kills, Orphans: orphans, Notes: notes})
}

// leaseIssueTime asks Vault when lease id was issued.
func leaseIssueTime(t testing.TB, v *framework.Vault, id string) time.Time {
	t.Helper()
	s, err := v.Client.Logical().Write("sys/leases/lookup", map[string]any{"lease_id": id})
	if err != nil || s == nil {
		return time.Time{} // gone meanwhile
	}
	at, _ := s.Data["issue_time"].(string)
	ts, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return time.Time{}
	}
	return ts
}
