package csi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/source"
)

func TestDriver_Publish_writesFiles(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"username": "app", "password": "pw-sekrit-1"})
	e.b.set("api-key", "v1", map[string]string{"token": "api-sekrit-1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db,api-key", AttrFiles: "api-key/token=api.token", AttrBundle: "bundle.json"})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"db/password": "pw-sekrit-1", "db/username": "app", "api.token": "api-sekrit-1"} {
		if got := readFile(t, filepath.Join(r.TargetPath, p)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
		fi, _ := os.Stat(filepath.Join(r.TargetPath, p))
		if fi.Mode().Perm() != 0o400 {
			t.Errorf("%s mode = %v, want 0400", p, fi.Mode().Perm())
		}
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "bundle.json")); !strings.Contains(got, `"db":{"password":"pw-sekrit-1","username":"app"}`) {
		t.Errorf("bundle = %s", got)
	}
	if e.d.Volumes() != 1 {
		t.Errorf("volumes = %d", e.d.Volumes())
	}
}

func TestDriver_Publish_idempotency(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw"})
	attrs := map[string]string{AttrSecrets: "db"}
	r, err := e.publish("p1", "secrets", attrs)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.Publish(context.Background(), r); err != nil {
		t.Fatalf("second publish with the same arguments: %v", err)
	}
	r2 := r
	r2.VolumeContext = volumeContext("p1", "uid-p1", "token-for-p1-sekrit", map[string]string{AttrSecrets: "db", AttrFileMode: "0440"})
	if err := e.d.Publish(context.Background(), r2); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("publish with different attributes: %v, want ErrAlreadyExists", err)
	}
	if st, _ := status.FromError(toStatus(ErrAlreadyExists)); st.Code() != codes.AlreadyExists {
		t.Errorf("code = %v", st.Code())
	}
	if err := e.d.Unpublish(context.Background(), "unknown-volume", "/nowhere/mount"); err != nil {
		t.Fatalf("unpublish of an unknown volume: %v", err)
	}
	if err := e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath); err != nil {
		t.Fatalf("second unpublish: %v", err)
	}
	if _, err := os.Lstat(r.TargetPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target still there after unpublish: %v", err)
	}
	if recs, _ := e.db.List(volumesBucket); len(recs) != 0 {
		t.Errorf("%d records left", len(recs))
	}
}

func TestDriver_Publish_refusesAndWritesNothing(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw"})
	uid, tok := e.pod("p1")
	otherUID, otherTok := e.pod("p2")
	good := volumeContext("p1", uid, tok, map[string]string{AttrSecrets: "db"})
	cases := []struct {
		name   string
		target string
		vc     map[string]string
		want   error
	}{
		{"target outside kubelet dir", filepath.Join(e.dir, "elsewhere", "mount"), good, ErrInvalidRequest},
		{"target of another pod", e.target(otherUID, "secrets"), good, ErrInvalidRequest},
		{"target with ..", e.target(uid, "secrets") + "/../../x/mount", good, ErrInvalidRequest},
		{"target not ending in mount", filepath.Dir(e.target(uid, "secrets")), good, ErrInvalidRequest},
		{"token of another pod", e.target(uid, "secrets"), volumeContext("p1", uid, otherTok, map[string]string{AttrSecrets: "db"}), ErrInvalidRequest},
		{"unknown token", e.target(uid, "secrets"), volumeContext("p1", uid, "forged", map[string]string{AttrSecrets: "db"}), broker.ErrUnauthenticated},
		{"secret not granted", e.target(uid, "secrets"), volumeContext("p1", uid, tok, map[string]string{AttrSecrets: "db,other"}), broker.ErrNotFound},
		{"grant not in force", e.target(uid, "secrets"), volumeContext("p1", uid, tok, map[string]string{AttrGrant: "nope"}), ErrInvalidRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := e.d.Publish(context.Background(), PublishRequest{VolumeID: "v-" + tc.name, TargetPath: tc.target, VolumeContext: tc.vc, GID: -1})
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if _, err := os.Lstat(filepath.Join(e.root, "pods")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("something was written under the kubelet root")
			}
			if _, err := os.Lstat(filepath.Join(e.dir, "elsewhere")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("something was written outside the kubelet root")
			}
		})
	}
	// A symlink in the kubelet tree that leads elsewhere is refused too.
	if err := os.MkdirAll(filepath.Join(e.root, "pods", uid, "volumes"), 0o755); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(e.root, "pods", uid, "volumes", "kubernetes.io~csi")); err != nil {
		t.Fatal(err)
	}
	err := e.d.Publish(context.Background(), PublishRequest{VolumeID: "v-link", TargetPath: e.target(uid, "secrets"), VolumeContext: good, GID: -1})
	if !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("publish through a symlink: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("written through the symlink")
	}
}

func TestDriver_Publish_republishDuringOutageKeepsFiles(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e.b.mu.Lock()
	e.b.getErr = brokerErr(broker.ErrUnavailable)
	e.b.mu.Unlock()
	if err := e.d.Publish(context.Background(), r); err != nil {
		t.Fatalf("republish while the source is down: %v", err)
	}
	e.b.mu.Lock()
	e.b.authErr = brokerErr(broker.ErrUnavailable)
	e.b.mu.Unlock()
	if err := e.d.Publish(context.Background(), r); err != nil {
		t.Fatalf("republish while identity is down: %v", err)
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "pw1" {
		t.Errorf("password = %q, want the old content", got)
	}
	// A first publish in the same outage fails and leaves nothing.
	e.b.mu.Lock()
	e.b.authErr = nil
	e.b.mu.Unlock()
	r2, err := e.publish("p2", "secrets", map[string]string{AttrSecrets: "db"})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("first publish during an outage: %v", err)
	}
	if _, err := os.Lstat(r2.TargetPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed first publish left its target")
	}
}

func TestDriver_rotation_rewritesAndRevokes(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	e.b.set("api", "v1", map[string]string{"token": "t1"})
	r1, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db,api"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.publish("p2", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e.b.set("db", "v2", map[string]string{"password": "pw2"})
	for _, r := range []PublishRequest{r1, r2} {
		eventually(t, "rotation of "+r.VolumeID, func() bool {
			b, _ := os.ReadFile(filepath.Join(r.TargetPath, "db/password"))
			return string(b) == "pw2"
		})
	}
	e.b.deny("api")
	eventually(t, "revocation", func() bool {
		_, err := os.Lstat(filepath.Join(r1.TargetPath, "db/password"))
		return errors.Is(err, os.ErrNotExist)
	})
	if got := readFile(t, filepath.Join(r2.TargetPath, "db/password")); got != "pw2" {
		t.Errorf("the other volume lost its files: %q", got)
	}
	// A republish of the revoked volume is refused while the grant is withdrawn.
	if err := e.d.Publish(context.Background(), r1); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("republish of a revoked volume: %v", err)
	}
}

func TestDriver_Recover_keepsFilesAndRotation(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e.d.Close() // the daemon stops; files stay
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "pw1" {
		t.Fatalf("files lost at shutdown: %q", got)
	}
	e.b.set("db", "v2", map[string]string{"password": "pw2"}) // changes while down
	e.start()
	if e.d.Volumes() != 1 {
		t.Fatalf("recovered %d volumes, want 1", e.d.Volumes())
	}
	eventually(t, "rotation after restart", func() bool {
		b, _ := os.ReadFile(filepath.Join(r.TargetPath, "db/password"))
		return string(b) == "pw2"
	})
	if err := e.d.Publish(context.Background(), r); err != nil {
		t.Fatalf("republish after restart: %v", err)
	}
	if err := e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(r.TargetPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unpublish after restart left the target")
	}
}

func TestDriver_logs_neverContainSecrets(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw-sekrit-1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e.b.set("db", "v2", map[string]string{"password": "pw-sekrit-2"})
	eventually(t, "rotation", func() bool {
		b, _ := os.ReadFile(filepath.Join(r.TargetPath, "db/password"))
		return string(b) == "pw-sekrit-2"
	})
	_, _ = e.publish("p2", "secrets", map[string]string{AttrSecrets: "db", "bogus": "x"})
	e.b.deny("db")
	eventually(t, "revocation", func() bool { _, err := os.Lstat(filepath.Join(r.TargetPath, "db")); return err != nil })
	srv := NewServer(e.d)
	_, err = srv.NodePublishVolume(context.Background(), &csipb.NodePublishVolumeRequest{VolumeId: "x", TargetPath: "/x", Readonly: true,
		VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}}},
		VolumeContext:    volumeContext("p1", "uid-p1", "token-for-p1-sekrit", map[string]string{AttrSecrets: "db"})})
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || strings.Contains(st.Message(), "sekrit") {
		t.Errorf("status = %v", err)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "volume published") || !strings.Contains(logs, "volume revoked") {
		t.Fatalf("the flow did not run: %s", logs)
	}
	if strings.Contains(logs, "sekrit") {
		t.Fatalf("a token or secret value reached the logs:\n%s", logs)
	}
}

func TestServer_NodePublishVolume_badRequests(t *testing.T) {
	e := newEnv(t)
	srv := NewServer(e.d)
	mountCap := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}}}
	cases := []struct {
		name string
		req  *csipb.NodePublishVolumeRequest
		msg  string
	}{
		{"no volume id", &csipb.NodePublishVolumeRequest{TargetPath: "/t", VolumeCapability: mountCap}, "volume_id is required"},
		{"no target", &csipb.NodePublishVolumeRequest{VolumeId: "v", VolumeCapability: mountCap}, "target_path is required"},
		{"no capability", &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t"}, "volume_capability is required"},
		{"block", &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}}}, "block"},
		{"no context", &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", VolumeCapability: mountCap, Readonly: true}, "volume_context is empty"},
		{"bad fsGroup", &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", Readonly: true, VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{VolumeMountGroup: "wheel"}}}}, "numeric"},
		{"writable", &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", VolumeCapability: mountCap},
			"the volume must be read-only: set readOnly: true on the pod's csi volume"},
		{"multi-node writer", &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", Readonly: true, VolumeCapability: &csipb.VolumeCapability{
			AccessType: mountCap.AccessType, AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}},
			"a multi-node writer access mode is not supported"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := srv.NodePublishVolume(context.Background(), tc.req)
			st, _ := status.FromError(err)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("status = %v %q, want InvalidArgument containing %q", st.Code(), st.Message(), tc.msg)
			}
		})
	}
	info, err := srv.GetPluginInfo(context.Background(), &csipb.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "keywarden.dev" {
		t.Errorf("plugin info = %v, %v", info, err)
	}
	ni, err := srv.NodeGetInfo(context.Background(), &csipb.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-a" {
		t.Errorf("node info = %v, %v", ni, err)
	}
}

func TestDriver_rotation_sourceErrorPolicy(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	fail := func(err error) int {
		e.b.mu.Lock()
		defer e.b.mu.Unlock()
		e.b.getErr = err
		e.b.wakeLocked()
		return e.b.watchRuns
	}
	runs := func() int {
		e.b.mu.Lock()
		defer e.b.mu.Unlock()
		return e.b.watchRuns
	}
	// Transient: the watch retries and the files stay.
	before := fail(sourceErr(broker.ErrUnavailable, source.ErrUnavailable))
	eventually(t, "retries after a transient source error", func() bool { return runs() >= before+2 })
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "pw1" {
		t.Fatalf("files changed after a transient source error: %q", got)
	}
	// Authoritative: the secret was deleted in the source; the files go.
	fail(sourceErr(broker.ErrNotFound, source.ErrDeleted))
	eventually(t, "revocation after the secret was deleted", func() bool {
		_, err := os.Lstat(filepath.Join(r.TargetPath, "db/password"))
		return errors.Is(err, os.ErrNotExist)
	})
}

func TestDriver_Publish_grantExpandedByTheBroker(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	e.b.set("api", "v1", map[string]string{"token": "t1"})
	e.b.mu.Lock()
	e.b.grants["demo-app"] = []string{"db", "api"}
	e.b.mu.Unlock()
	r, err := e.publish("p1", "secrets", map[string]string{AttrGrant: "demo-app"})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "pw1" {
		t.Errorf("db/password = %q", got)
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "api/token")); got != "t1" {
		t.Errorf("api/token = %q", got)
	}
}
