//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keywarden/keywarden/e2e/framework"
)

// podLeaseGrant lets namespace ns / service account app read a database credential of its
// own (share: Pod) as "dbpod".
func podLeaseGrant(ns string) string {
	return fmt.Sprintf(`---
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: app-db-pod}
spec:
  subjects: [{namespace: %s, serviceAccount: app}]
  secrets:
    - name: dbpod
      share: Pod
      source: {vault: {mount: database, engine: database, role: app}}
`, ns)
}

// leasePrefix is where Vault lists the leases of the e2e database role.
const leasePrefix = "database/creds/app/"

// vaultLeases lists Vault's own leases under prefix: the judge of what is left.
func vaultLeases(t testing.TB, v *framework.Vault, prefix string) []string {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := v.Client.Logical().ListWithContext(c, "sys/leases/lookup/"+prefix)
	if err != nil {
		t.Fatalf("list vault leases under %s: %v", prefix, err)
	}
	var out []string
	if s != nil {
		keys, _ := s.Data["keys"].([]any)
		for _, k := range keys {
			if id, ok := k.(string); ok {
				out = append(out, prefix+id)
			}
		}
	}
	slices.Sort(out)
	return out
}

type dbCred struct{ user, pass string }

func volumeCred(t testing.TB, target, dir string) dbCred {
	t.Helper()
	c := dbCred{readFile(filepath.Join(target, dir, "username")), readFile(filepath.Join(target, dir, "password"))}
	if c.user == "" || c.pass == "" {
		t.Fatalf("%s: no database credential in the volume", target)
	}
	remember(c.pass)
	return c
}

// revokedWithin waits until the credential no longer logs in to PostgreSQL and Vault lists
// want leases under the role's prefix, and returns how long each took since start.
func (e *csiVaultEnv) revokedWithin(t *testing.T, start time.Time, c dbCred, want int) (login, lease time.Duration) {
	t.Helper()
	waitFor(t, 60*time.Second, "the credential to stop logging in", func() bool { return e.pg.CanLogin(ctx(t), c.user, c.pass) != nil })
	login = time.Since(start)
	waitFor(t, 60*time.Second, fmt.Sprintf("%d leases in Vault", want), func() bool { return len(vaultLeases(t, e.vault, leasePrefix)) == want })
	return login, time.Since(start)
}

// TestCSI_vaultPodLeases: three pods each mount their own database credential (share: Pod).
// Deleting a pod, unpublishing a volume and withdrawing the grant each revoke the credential
// in Vault within seconds: it stops logging in to PostgreSQL and Vault's lease list no longer
// has it, while the other pods' credentials keep working.
func TestCSI_vaultPodLeases(t *testing.T) {
	e := startCSIVault(t, csiVaultOptions{withPostgres: true, dbTTL: 5 * time.Minute, dbMaxTTL: 10 * time.Minute, extraGrants: podLeaseGrant})
	pods, targets := e.publishPods(t, 3, map[string]string{"secrets": "dbpod"})
	creds := make([]dbCred, len(targets))
	for i, target := range targets {
		waitFor(t, 30*time.Second, "the volume's files", func() bool { return readFile(filepath.Join(target, "dbpod/password")) != "" })
		creds[i] = volumeCred(t, target, "dbpod")
		if err := e.pg.CanLogin(ctx(t), creds[i].user, creds[i].pass); err != nil {
			t.Fatalf("pod %d's credential does not log in: %v", i, err)
		}
		for j := range i {
			if creds[j].user == creds[i].user {
				t.Fatalf("pods %d and %d share a credential under share: Pod", j, i)
			}
		}
	}
	if got := vaultLeases(t, e.vault, leasePrefix); len(got) != 3 {
		t.Fatalf("Vault lists %d leases, want one per pod (3)", len(got))
	}

	// 1. The pod is deleted (the informer sees it): its credential goes, the others stay.
	start := time.Now()
	e.kl.DeletePod(t, pods[0])
	login, lease := e.revokedWithin(t, start, creds[0], 2)
	t.Logf("pod deleted: its credential refused by PostgreSQL after %v, its lease gone from Vault after %v", login.Round(time.Millisecond), lease.Round(time.Millisecond))

	// 2. The volume is unpublished (the pod still runs).
	start = time.Now()
	if err := e.kl.Unpublish(ctx(t), pods[1], "secrets"); err != nil {
		t.Fatal(err)
	}
	login, lease = e.revokedWithin(t, start, creds[1], 1)
	t.Logf("volume unpublished: credential refused after %v, lease gone after %v", login.Round(time.Millisecond), lease.Round(time.Millisecond))

	// 3. The grant is withdrawn (the grants file loses it).
	if err := e.pg.CanLogin(ctx(t), creds[2].user, creds[2].pass); err != nil {
		t.Fatalf("the last pod's credential stopped working before its grant was withdrawn: %v", err)
	}
	start = time.Now()
	writeFile(t, e.grants, csiVaultGrant(e.ns))
	login, lease = e.revokedWithin(t, start, creds[2], 0)
	t.Logf("grant withdrawn: credential refused after %v (grants file polled every 1s), lease gone after %v", login.Round(time.Millisecond), lease.Round(time.Millisecond))
	waitFor(t, 30*time.Second, "the withdrawn volume's files removed", func() bool {
		_, err := os.Stat(filepath.Join(targets[2], "dbpod/password"))
		return err != nil
	})
}

// TestCSI_vaultLeasesKillRestart: four pods hold their own database credentials; the daemon
// is killed with SIGKILL; while it is down one pod is deleted and another's volume vanishes
// (kubelet cleaned it up). After the restart Vault's lease list matches exactly the leases
// still in use: the two live volumes' (which keep working), none orphaned.
func TestCSI_vaultLeasesKillRestart(t *testing.T) {
	const orphanGrace = 3 * time.Second
	e := startCSIVault(t, csiVaultOptions{withPostgres: true, dbTTL: 5 * time.Minute, dbMaxTTL: 10 * time.Minute, extraGrants: podLeaseGrant, orphanGrace: orphanGrace})
	pods, targets := e.publishPods(t, 4, map[string]string{"secrets": "dbpod"})
	creds := make([]dbCred, len(targets))
	for i, target := range targets {
		waitFor(t, 30*time.Second, "the volume's files", func() bool { return readFile(filepath.Join(target, "dbpod/password")) != "" })
		creds[i] = volumeCred(t, target, "dbpod")
	}
	if got := vaultLeases(t, e.vault, leasePrefix); len(got) != 4 {
		t.Fatalf("Vault lists %d leases before the kill, want 4", len(got))
	}

	e.d.Process.Kill()
	e.kl.DeletePod(t, pods[2]) // deleted while the daemon is down: no informer event after the restart
	unmountUnder(t, filepath.Dir(targets[3]))
	if err := os.RemoveAll(targets[3]); err != nil { // the volume is gone: its lease has no consumer
		t.Fatal(err)
	}
	start := time.Now()
	e.d.Restart(t)

	for _, i := range []int{2, 3} {
		waitFor(t, 60*time.Second, fmt.Sprintf("pod %d's credential refused", i), func() bool { return e.pg.CanLogin(ctx(t), creds[i].user, creds[i].pass) != nil })
	}
	waitFor(t, 60*time.Second, "2 leases in Vault", func() bool { return len(vaultLeases(t, e.vault, leasePrefix)) == 2 })
	t.Logf("after the restart: the deleted pod's and the vanished volume's leases revoked within %v (orphan grace %v)", time.Since(start).Round(time.Millisecond), orphanGrace)
	// Nothing still in use was taken: after two more grace periods the live volumes' credentials
	// still log in and are exactly the two leases Vault lists.
	time.Sleep(2 * orphanGrace)
	for _, i := range []int{0, 1} {
		c := volumeCred(t, targets[i], "dbpod")
		if err := e.pg.CanLogin(ctx(t), c.user, c.pass); err != nil {
			t.Fatalf("live pod %d's credential no longer logs in after the restart: %v", i, err)
		}
	}
	if got := vaultLeases(t, e.vault, leasePrefix); len(got) != 2 {
		t.Fatalf("Vault lists %d leases, want exactly the 2 in use", len(got))
	}
}
