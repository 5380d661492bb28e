package csi

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// serveCSI runs NewGRPCServer for e's driver on a Unix socket until the test ends.
func serveCSI(t *testing.T, e *env) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewGRPCServer(e.d)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-done
	})
	return conn
}

// TestNewGRPCServer_panicBecomesInternal: a handler that panics answers Internal with a fixed
// message, the panic is logged without its value, and the server keeps serving.
func TestNewGRPCServer_panicBecomesInternal(t *testing.T) {
	e := newEnv(t)
	uid, tok := e.pod("p1")
	e.b.mu.Lock()
	e.b.panicMsg = "boom " + tok // a panic value may carry request data
	e.b.mu.Unlock()
	conn := serveCSI(t, e)
	node := csipb.NewNodeClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mount := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}}}
	_, err := node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "vol-p1", TargetPath: e.target(uid, "secrets"), Readonly: true,
		VolumeCapability: mount, VolumeContext: volumeContext("p1", uid, tok, map[string]string{AttrSecrets: "db"})})
	st, _ := status.FromError(err)
	if st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Fatalf("status = %v %q, want Internal %q", st.Code(), st.Message(), "internal error")
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "panic in handler") || !strings.Contains(logs, "NodePublishVolume") {
		t.Fatalf("panic not logged:\n%s", logs)
	}
	if strings.Contains(logs, "sekrit") || strings.Contains(logs, "boom") {
		t.Fatalf("the panic value reached the logs:\n%s", logs)
	}
	ni, err := node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-a" {
		t.Fatalf("after the panic: %v, %v", ni, err)
	}
}

// TestNewGRPCServer_logsWithoutRequest: each call is logged with its method and code, never
// with its request (the volume context carries the pod's token).
func TestNewGRPCServer_logsWithoutRequest(t *testing.T) {
	e := newEnv(t)
	uid, tok := e.pod("p1")
	node := csipb.NewNodeClient(serveCSI(t, e))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mount := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}}}
	_, err := node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "vol-p1", TargetPath: e.target(uid, "secrets"), Readonly: true,
		VolumeCapability: mount, VolumeContext: volumeContext("p1", uid, tok, map[string]string{AttrSecrets: "db", "bogus": "x"})})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("publish: %v", err)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "NodePublishVolume") || !strings.Contains(logs, "InvalidArgument") {
		t.Fatalf("call not logged:\n%s", logs)
	}
	if strings.Contains(logs, "sekrit") {
		t.Fatalf("the token reached the logs:\n%s", logs)
	}
}
