package grpcx

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// nobody and nogroup are uids no test runs as (tests may run as root: 0 would not do).
const (
	nobody  = 4294967294
	nogroup = 4294967293
)

// probeService has a method of every kind; its handlers count the calls that reach them.
type probeService struct{ calls atomic.Int32 }

func (p *probeService) desc() *grpc.ServiceDesc {
	stream := func(_ any, ss grpc.ServerStream) error {
		p.calls.Add(1)
		return ss.SendMsg(&emptypb.Empty{})
	}
	return &grpc.ServiceDesc{
		ServiceName: "probe.Probe",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Unary", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			p.calls.Add(1)
			return &emptypb.Empty{}, dec(&emptypb.Empty{})
		}}},
		Streams: []grpc.StreamDesc{
			{StreamName: "ServerStream", Handler: stream, ServerStreams: true},
			{StreamName: "ClientStream", Handler: stream, ClientStreams: true},
			{StreamName: "Bidi", Handler: stream, ServerStreams: true, ClientStreams: true},
		},
	}
}

// serveFiltered serves a probeService on a Unix socket behind a peer filter allowing allowed
// and returns a client connection, the service and the uids onRefuse was called with.
func serveFiltered(t *testing.T, allowed []uint32) (*grpc.ClientConn, *probeService, func() []uint32) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	lis, err := ListenUnix(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var refused []uint32
	// Refused connections live for a minute here, so that each test sees one per client.
	f := newPeerFilter(lis, allowed, func(uid uint32) { mu.Lock(); refused = append(refused, uid); mu.Unlock() }, time.Minute)
	probe := &probeService{}
	srv := grpc.NewServer()
	srv.RegisterService(probe.desc(), probe)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, f, time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if err := f.Close(); err != nil { // idempotent: the server closed it when it stopped
			t.Errorf("second close: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, probe, func() []uint32 { mu.Lock(); defer mu.Unlock(); return append([]uint32(nil), refused...) }
}

// callAll makes one call of every kind, and one to a method no server has, and returns their
// errors by method.
func callAll(t *testing.T, conn *grpc.ClientConn) map[string]error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := map[string]error{}
	out["Unary"] = conn.Invoke(ctx, "/probe.Probe/Unary", &emptypb.Empty{}, &emptypb.Empty{})
	for _, d := range []grpc.StreamDesc{
		{StreamName: "ServerStream", ServerStreams: true},
		{StreamName: "ClientStream", ClientStreams: true},
		{StreamName: "Bidi", ServerStreams: true, ClientStreams: true},
		{StreamName: "NoSuchMethod", ServerStreams: true},
	} {
		err := func() error {
			st, err := conn.NewStream(ctx, &d, "/probe.Probe/"+d.StreamName)
			if err != nil {
				return err
			}
			if err := st.SendMsg(&emptypb.Empty{}); err != nil {
				return st.RecvMsg(&emptypb.Empty{}) // the status, when the server ended the stream
			}
			if err := st.CloseSend(); err != nil {
				return err
			}
			return st.RecvMsg(&emptypb.Empty{})
		}()
		out[d.StreamName] = err
	}
	return out
}

// TestPeerFilter_refusedPeerReadsWhy: a process whose uid is not allowed gets PermissionDenied
// naming the allowed uids and its own on every call, unary or streaming, and no call reaches a
// handler. onRefuse is called once for its one connection.
func TestPeerFilter_refusedPeerReadsWhy(t *testing.T) {
	conn, probe, refused := serveFiltered(t, []uint32{nobody, nogroup, nobody})
	want := fmt.Sprintf("the admin socket accepts only uid %d and %d; this process runs as uid %d", uint32(nobody), uint32(nogroup), os.Getuid())
	for method, err := range callAll(t, conn) {
		st, _ := status.FromError(err)
		if st.Code() != codes.PermissionDenied || st.Message() != want {
			t.Errorf("%s: got %v %q, want PermissionDenied %q", method, st.Code(), st.Message(), want)
		}
	}
	if n := probe.calls.Load(); n != 0 {
		t.Fatalf("%d calls of a refused peer reached a handler", n)
	}
	if got := refused(); len(got) != 1 || got[0] != uint32(os.Getuid()) {
		t.Fatalf("onRefuse called with %v, want once with uid %d", got, os.Getuid())
	}
}

// TestPeerFilter_allowedPeerIsServed: an allowed process reaches every handler, and nothing is
// refused.
func TestPeerFilter_allowedPeerIsServed(t *testing.T) {
	conn, probe, refused := serveFiltered(t, []uint32{0, uint32(os.Getuid())})
	for method, err := range callAll(t, conn) {
		want := codes.OK
		if method == "NoSuchMethod" {
			want = codes.Unimplemented
		}
		if status.Code(err) != want {
			t.Errorf("%s: got %v, want %v", method, err, want)
		}
	}
	if n := probe.calls.Load(); n != 4 {
		t.Fatalf("%d calls reached a handler, want 4", n)
	}
	if got := refused(); len(got) != 0 {
		t.Fatalf("an allowed peer was refused: %v", got)
	}
}

// TestPeerFilter_refusedSlotsAreFreed: connections held open by refused peers take the slots
// of those being answered; once they close, a refused gRPC client is answered again rather
// than cut off.
func TestPeerFilter_refusedSlotsAreFreed(t *testing.T) {
	conn, _, refused := serveFiltered(t, []uint32{nobody})
	target := conn.CanonicalTarget()[len("unix://"):]
	var raws []net.Conn
	for range maxRefusing {
		c, err := net.Dial("unix", target)
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, c)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(refused()) < maxRefusing { // every raw connection holds a slot
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d raw connections refused", len(refused()), maxRefusing)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range raws {
		_ = c.Close()
	}
	for {
		err := conn.Invoke(context.Background(), "/probe.Probe/Unary", &emptypb.Empty{}, &emptypb.Empty{})
		if status.Code(err) == codes.PermissionDenied {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the raw connections closed: %v, want PermissionDenied", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRefusal_message(t *testing.T) {
	for _, tc := range []struct {
		allowed []uint32
		uid     uint32
		known   bool
		want    string
	}{
		{[]uint32{0, 0}, 1234, true, "the admin socket accepts only uid 0; this process runs as uid 1234"},
		{[]uint32{0, 999}, 1234, true, "the admin socket accepts only uid 0 and 999; this process runs as uid 1234"},
		{[]uint32{0, 1, 2}, 1234, true, "the admin socket accepts only uid 0, 1 and 2; this process runs as uid 1234"},
		{[]uint32{0}, 0, false, "the admin socket accepts only uid 0, and could not read this process's uid (SO_PEERCRED)"},
	} {
		if got := refusal(tc.allowed, tc.uid, tc.known); got != tc.want {
			t.Errorf("refusal(%v, %d, %v) = %q, want %q", tc.allowed, tc.uid, tc.known, got, tc.want)
		}
	}
}
