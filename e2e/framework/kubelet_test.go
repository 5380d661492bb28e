package framework

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// fakeNode stands in for the daemon's CSI Node service (not for a
// third-party server) to check what the kubelet driver sends over a real
// Unix socket.
type fakeNode struct {
	csi.UnimplementedNodeServer
	mu        sync.Mutex
	publishes []*csi.NodePublishVolumeRequest
	unpubs    []*csi.NodeUnpublishVolumeRequest
}

func (f *fakeNode) NodePublishVolume(_ context.Context, r *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.publishes = append(f.publishes, r)
	return &csi.NodePublishVolumeResponse{}, nil
}

func (f *fakeNode) NodeUnpublishVolume(_ context.Context, r *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unpubs = append(f.unpubs, r)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func serveFakeNode(t *testing.T) (*fakeNode, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	f := &fakeNode{}
	csi.RegisterNodeServer(srv, f)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return f, sock
}

func TestCSINodeClient_Publish_sendsKubeletVolumeContext(t *testing.T) {
	f, sock := serveFakeNode(t)
	c := DialCSI(t, sock)
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	pod := PodInfo{Name: "app-x", Namespace: "ns1", UID: "uid-1", ServiceAccount: "app"}
	target := filepath.Join(t.TempDir(), "mount")
	id, err := c.Publish(context.Background(), PublishRequest{
		Pod: pod, Tokens: map[string]Token{"keywarden": {Token: "tok-secret-value", ExpirationTimestamp: exp}},
		Attributes: map[string]string{"secrets": "db"}, Driver: "keywarden.dev", TargetPath: target,
	})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if id != VolumeID("uid-1", "secrets", "keywarden.dev") || !strings.HasPrefix(id, "csi-") {
		t.Fatalf("volume id = %q", id)
	}
	if len(f.publishes) != 1 {
		t.Fatalf("got %d publishes", len(f.publishes))
	}
	r := f.publishes[0]
	want := map[string]string{
		"secrets":                   "db",
		VolumeContextPodName:        "app-x",
		VolumeContextPodNamespace:   "ns1",
		VolumeContextPodUID:         "uid-1",
		VolumeContextServiceAccount: "app",
		VolumeContextEphemeral:      "true",
	}
	for k, v := range want {
		if r.VolumeContext[k] != v {
			t.Errorf("volume_context[%s] = %q, want %q", k, r.VolumeContext[k], v)
		}
	}
	var toks map[string]struct {
		Token               string `json:"token"`
		ExpirationTimestamp string `json:"expirationTimestamp"`
	}
	if err := json.Unmarshal([]byte(r.VolumeContext[VolumeContextTokens]), &toks); err != nil {
		t.Fatalf("tokens json: %v", err)
	}
	if toks["keywarden"].Token != "tok-secret-value" || toks["keywarden"].ExpirationTimestamp != "2030-01-02T03:04:05Z" {
		t.Errorf("tokens entry wrong (expiration %q)", toks["keywarden"].ExpirationTimestamp)
	}
	if r.TargetPath != target || r.VolumeCapability.GetMount() == nil ||
		r.VolumeCapability.GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER {
		t.Errorf("target/capability wrong: %v", r.VolumeCapability)
	}

	if err := c.Unpublish(context.Background(), id, target); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	if len(f.unpubs) != 1 || f.unpubs[0].VolumeId != id || f.unpubs[0].TargetPath != target {
		t.Fatalf("unpublish requests = %v", f.unpubs)
	}
}

func TestCSINodeClient_Publish_requiresTargetPath(t *testing.T) {
	_, sock := serveFakeNode(t)
	if _, err := DialCSI(t, sock).Publish(context.Background(), PublishRequest{}); err == nil {
		t.Fatal("publish without target path succeeded")
	}
}

func TestToken_String_redacts(t *testing.T) {
	tok := Token{Token: "eyJhbGciOi-secret", ExpirationTimestamp: time.Unix(0, 0)}
	for _, s := range []string{tok.String(), fmt.Sprintf("%v", tok), fmt.Sprintf("%+v", tok), fmt.Sprintf("%#v", tok), fmt.Sprint(map[string]Token{"a": tok})} {
		if strings.Contains(s, "secret") {
			t.Fatalf("token leaked: %s", s)
		}
	}
}

func TestRedactErr_removesSecrets(t *testing.T) {
	err := redactErr(fmt.Errorf("connect postgres://u:pa55word@h: failed for pa55word"), "pa55word")
	if strings.Contains(err.Error(), "pa55word") {
		t.Fatalf("secret leaked: %v", err)
	}
}

func TestParseVersions_findsKey(t *testing.T) {
	b := []byte("# comment\nA_VERSION=v1\nB_VERSION=\"v2\"\n")
	for key, want := range map[string]string{"A_VERSION": "v1", "B_VERSION": "v2"} {
		if got, err := parseVersions(b, key); err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", key, got, err, want)
		}
	}
	if _, err := parseVersions(b, "C_VERSION"); err == nil {
		t.Error("missing key found")
	}
}
