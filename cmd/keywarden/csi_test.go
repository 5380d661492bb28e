package main

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/csi"
)

// With a non-default identity.audiences, the driver must take the pod token for that audience
// from kubelet's token map (the CSIDriver's tokenRequests name it): before the wiring passed
// it, the driver looked for "keywarden" and refused every publish.
func TestDaemon_csiTakesTheTokenOfTheConfiguredAudience(t *testing.T) {
	dir := t.TempDir()
	cfg, err := devConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Identity.Audiences = []string{"kw-prod"}
	cfg.NodeName = "node-1"
	root := filepath.Join(dir, "kubelet")
	cfg.CSI = csiConfig{Socket: filepath.Join(dir, "csi.sock"), KubeletRoot: root, DriverName: csi.DefaultDriverName, TmpfsBytes: 1 << 20, PlainDirs: true}
	d, err := newDaemon(cfg, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	if _, err := d.local.PutIfAbsent(context.Background(), "demo-db", map[string][]byte{"password": []byte("pw")}); err != nil {
		t.Fatal(err)
	}
	tok, err := d.dev.Issue(identity.DevTokenRequest{Namespace: "demo", ServiceAccount: "app", PodName: "p", PodUID: "0b8e3f36-93c4-4b8e-9f4c-2a5d1c6e7f80", Audiences: []string{"kw-prod"}})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(audience, vol string) error {
		tokens, _ := json.Marshal(map[string]map[string]string{audience: {"token": tok.Reveal(), "expirationTimestamp": "2030-01-01T00:00:00Z"}})
		uid := "0b8e3f36-93c4-4b8e-9f4c-2a5d1c6e7f80"
		return d.csi.driver.Publish(context.Background(), csi.PublishRequest{
			VolumeID: "vol-" + vol, GID: -1,
			TargetPath: filepath.Join(root, "pods", uid, "volumes", "kubernetes.io~csi", vol, "mount"),
			VolumeContext: map[string]string{
				csi.CtxPodName: "p", csi.CtxPodNamespace: "demo", csi.CtxPodUID: uid, csi.CtxServiceAccount: "app",
				csi.CtxEphemeral: "true", csi.CtxTokens: string(tokens), csi.AttrSecrets: "demo-db",
			},
		})
	}
	// As root the volume is a real tmpfs (plain directories otherwise): unmounted at the end.
	if err := publish("kw-prod", "a"); err != nil {
		t.Fatalf("publish with a token for the configured audience: %v", err)
	}
	t.Cleanup(func() {
		uid := "0b8e3f36-93c4-4b8e-9f4c-2a5d1c6e7f80"
		if err := d.csi.driver.Unpublish(context.Background(), "vol-a", filepath.Join(root, "pods", uid, "volumes", "kubernetes.io~csi", "a", "mount")); err != nil {
			t.Errorf("unpublish: %v", err)
		}
	})
	// The volume's record is in volumes.db (committed without fsync), not in node.db.
	if d.volumes == nil || !d.volumes.NoSync() {
		t.Fatal("volumes.db is not open, or commits with fsync")
	}
	if recs, err := d.volumes.List("csi.volumes"); err != nil || len(recs) != 1 {
		t.Fatalf("volumes.db holds %d volume records (%v), want 1", len(recs), err)
	}
	if recs, err := d.node.List("csi.volumes"); err != nil || len(recs) != 0 {
		t.Fatalf("node.db holds %d volume records (%v), want 0", len(recs), err)
	}
	if st := d.keys.Status(); len(st.Stores) != 3 || st.Stores[2].Name != "volumes" {
		t.Fatalf("key rotation covers %+v, want state, node and volumes", st.Stores)
	}
	err = publish(csi.DefaultAudience, "b")
	if !errors.Is(err, csi.ErrInvalidRequest) || !strings.Contains(err.Error(), `no token for audience "kw-prod"`) {
		t.Fatalf("publish with only a %q token: %v, want ErrInvalidRequest naming kw-prod", csi.DefaultAudience, err)
	}
}
