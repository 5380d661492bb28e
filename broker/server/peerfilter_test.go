package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// countingRecorder counts audit events: the admin server records one for every call that
// reaches its audit interceptor, next to the handlers.
type countingRecorder struct{ n atomic.Int32 }

func (r *countingRecorder) Record(context.Context, audit.Event) { r.n.Add(1) }

// TestAdminService_refusedPeerReachesNoMethod serves the real admin server behind the peer
// filter, as the daemon does, allowing only a uid the test does not run as: every method of
// the service, unary and streaming, answers PermissionDenied with the reason, and none gets as
// far as the audit interceptor.
func TestAdminService_refusedPeerReachesNoMethod(t *testing.T) {
	s := newStack(t)
	rec := &countingRecorder{}
	as, err := server.NewAdminServer(server.AdminConfig{Broker: s.broker, Secrets: s.local, Cache: s.engine, TrustDomain: s.bs.td, Logger: s.bs.log, Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "a.sock")
	lis, err := grpcx.ListenUnix(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	const nobody = 4294967294
	var refused atomic.Int32
	lis = grpcx.PeerFilter(lis, []uint32{nobody}, func(uint32) { refused.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- grpcx.Serve(ctx, as, lis, time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	conn, err := grpc.NewClient(client.Target(sock), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	want := fmt.Sprintf("the admin socket accepts only uid %d; this process runs as uid %d", uint32(nobody), os.Getuid())
	desc := keywardenv1.AdminService_ServiceDesc
	call := func(method string, streams bool) error {
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		full := "/" + desc.ServiceName + "/" + method
		// An empty message is a valid encoding of every request type.
		if !streams {
			return conn.Invoke(cctx, full, &emptypb.Empty{}, &emptypb.Empty{})
		}
		st, err := conn.NewStream(cctx, &grpc.StreamDesc{ServerStreams: true}, full)
		if err != nil {
			return err
		}
		if err := st.SendMsg(&emptypb.Empty{}); err == nil {
			_ = st.CloseSend()
		}
		return st.RecvMsg(&emptypb.Empty{})
	}
	n := 0
	for _, m := range desc.Methods {
		expectExactStatus(t, call(m.MethodName, false), codes.PermissionDenied, want)
		n++
	}
	for _, m := range desc.Streams {
		expectExactStatus(t, call(m.StreamName, true), codes.PermissionDenied, want)
		n++
	}
	if n < 10 || len(desc.Streams) == 0 {
		t.Fatalf("only %d methods (%d streams) tried", n, len(desc.Streams))
	}
	if got := rec.n.Load(); got != 0 {
		t.Fatalf("%d calls of a refused peer reached the admin server's interceptors", got)
	}
	if got := refused.Load(); got != 1 {
		t.Fatalf("onRefuse called %d times for one connection", got)
	}
	// Control: the same empty GetStatus on the stack's own admin socket, which has no filter, is
	// served, so the calls above were well-formed and only the filter refused them.
	open, err := grpc.NewClient(client.Target(s.admin), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := open.Invoke(context.Background(), "/"+desc.ServiceName+"/GetStatus", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("GetStatus without the filter: %v", err)
	}
}
