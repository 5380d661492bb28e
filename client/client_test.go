package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// fakeServer is a hand-written SecretService that records tokens and scripts watch streams.
type fakeServer struct {
	keywardenv1.UnimplementedSecretServiceServer
	mu      sync.Mutex
	tokens  []string
	watches int
	// script[i] is what the i-th watch stream does: send versions, then end with err.
	script []watchStep
}

type watchStep struct {
	versions []string
	err      error
}

func (f *fakeServer) token(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, strings.Join(md.Get("authorization"), ","))
}

func (f *fakeServer) GetSecret(ctx context.Context, req *keywardenv1.GetSecretRequest) (*keywardenv1.GetSecretResponse, error) {
	f.token(ctx)
	return &keywardenv1.GetSecretResponse{Secret: &keywardenv1.Secret{Name: req.GetName(), Version: "1", Data: map[string][]byte{"k": []byte("v")}}}, nil
}

func (f *fakeServer) WatchSecrets(req *keywardenv1.WatchSecretsRequest, stream grpc.ServerStreamingServer[keywardenv1.WatchSecretsResponse]) error {
	f.token(stream.Context())
	f.mu.Lock()
	i := f.watches
	f.watches++
	f.mu.Unlock()
	if i >= len(f.script) {
		<-stream.Context().Done()
		return nil
	}
	for _, v := range f.script[i].versions {
		if err := stream.Send(&keywardenv1.WatchSecretsResponse{Secret: &keywardenv1.Secret{Name: req.GetNames()[0], Version: v}}); err != nil {
			return err
		}
	}
	return f.script[i].err
}

func serve(t *testing.T, f *fakeServer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	keywardenv1.RegisterSecretServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return sock
}

func TestNew_requiresToken(t *testing.T) {
	if _, err := New("/x"); err == nil || !strings.Contains(err.Error(), "token is required") {
		t.Fatal(err)
	}
}

func TestClient_Get_rereadsTokenFile(t *testing.T) {
	f := &fakeServer{}
	sock := serve(t, f)
	tokFile := filepath.Join(t.TempDir(), "token")
	c, err := New(sock, WithTokenFile(tokFile))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tok := range []string{"first", "second"} {
		if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(context.Background(), "db"); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(f.tokens, " ") != "Bearer first Bearer second" {
		t.Fatalf("tokens sent: %q", f.tokens)
	}
}

func TestClient_Get_tokenFileProblems(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, nil, 0o600)
	big := filepath.Join(dir, "big")
	_ = os.WriteFile(big, make([]byte, maxTokenFile+1), 0o600)
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing"), "read token file"},
		{empty, "is empty"},
		{big, "larger than"},
	} {
		c, _ := New(filepath.Join(dir, "no.sock"), WithTokenFile(tc.path))
		_, err := c.Get(context.Background(), "db")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.path, err)
		}
		c.Close()
	}
}

func TestClient_Watch_reconnectsThenStopsOnPermanentError(t *testing.T) {
	f := &fakeServer{script: []watchStep{
		{versions: []string{"1"}, err: status.Error(codes.Unavailable, "daemon restarting")},
		{versions: []string{"1", "2"}, err: status.Error(codes.Unauthenticated, "token expired: reconnect with a fresh token")},
		{versions: []string{"2", "3"}, err: status.Error(codes.PermissionDenied, "grant withdrawn")},
	}}
	sock := serve(t, f)
	c, _ := New(sock, WithToken("t"), WithBackoff(time.Millisecond, 5*time.Millisecond))
	defer c.Close()
	var got []string
	err := c.Watch(context.Background(), []string{"db"}, func(s *Secret) error {
		got = append(got, s.Version)
		return nil
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	if strings.Join(got, ",") != "1,1,2,2,3" || f.watches != 3 {
		t.Fatalf("versions %v over %d streams", got, f.watches)
	}
}

func TestClient_Watch_callbackErrorAndCancel(t *testing.T) {
	f := &fakeServer{script: []watchStep{{versions: []string{"1"}}}}
	sock := serve(t, f)
	c, _ := New(sock, WithToken("t"))
	defer c.Close()
	stop := errors.New("stop")
	if err := c.Watch(context.Background(), []string{"db"}, func(*Secret) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Watch(ctx, []string{"db"}, func(*Secret) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancel: %v", err)
	}
}

func TestSecret_String_hidesData(t *testing.T) {
	s := &Secret{Name: "db", Version: "1", Data: map[string][]byte{"password": []byte("hunter2-xyz")}}
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %d %x", s, s, s, s, s, s), fmt.Sprintf("%v %+v %#v %d %x", *s, *s, *s, *s, *s)} {
		if strings.Contains(out, "hunter2-xyz") {
			t.Fatalf("data printed: %s", out)
		}
	}
}
