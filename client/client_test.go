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
	"google.golang.org/protobuf/proto"

	"github.com/keywarden/keywarden/crypto"
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
	plain  bool                      // answer in clear whatever the request asks, like an old daemon
	tamper func(*keywardenv1.Secret) // applied to each sealed message
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
	p := &keywardenv1.Secret{Name: req.GetName(), Version: "1", Data: map[string][]byte{"k": []byte("v")}}
	if err := f.seal(req.GetReplyKey(), p, 1); err != nil {
		return nil, err
	}
	return &keywardenv1.GetSecretResponse{Secret: p}, nil
}

// seal does what the daemon does with a reply key, unless the fake plays an old daemon;
// tamper, when set, changes the message after sealing.
func (f *fakeServer) seal(rk *keywardenv1.ReplyKey, p *keywardenv1.Secret, seq uint64) error {
	f.mu.Lock()
	plain, tamper := f.plain, f.tamper
	f.mu.Unlock()
	if rk == nil || plain {
		return nil
	}
	s, err := crypto.NewReplySealer(rk.GetPublicKey(), rk.GetNonce())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	p.SealedFor, p.Seq = "demo/app/uid-1", seq
	payload, _ := proto.Marshal(&keywardenv1.SecretData{Data: p.GetData()})
	ct, err := s.Seal(payload, crypto.ReplyContext{For: p.SealedFor, Name: p.Name, Version: p.Version, Nonce: rk.GetNonce(), Seq: seq})
	if err != nil {
		return err
	}
	p.Data, p.Sealed = nil, ct
	if tamper != nil {
		tamper(p)
	}
	return nil
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
	for n, v := range f.script[i].versions {
		p := &keywardenv1.Secret{Name: req.GetNames()[0], Version: v}
		if err := f.seal(req.GetReplyKey(), p, uint64(n+1)); err != nil {
			return err
		}
		if err := stream.Send(&keywardenv1.WatchSecretsResponse{Secret: p}); err != nil {
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

// By default every request carries a reply key and the value comes back sealed; an answer in
// clear, or one whose sealed payload was moved, replayed or cut, is refused and its value never
// returned.
func TestClient_sealedResponses(t *testing.T) {
	f := &fakeServer{script: []watchStep{{versions: []string{"1"}}}}
	c, _ := New(serve(t, f), WithToken("t"))
	defer c.Close()
	s, err := c.Get(context.Background(), "db")
	if err != nil || string(s.Data["k"]) != "v" {
		t.Fatalf("sealed Get = %v, %v", s, err)
	}
	for _, tc := range []struct {
		name   string
		plain  bool
		tamper func(*keywardenv1.Secret)
	}{
		{"answered in clear (an old daemon, or a proxy)", true, nil},
		{"another secret's name", false, func(p *keywardenv1.Secret) { p.Name = "other" }},
		{"another version", false, func(p *keywardenv1.Secret) { p.Version = "2" }},
		{"another caller", false, func(p *keywardenv1.Secret) { p.SealedFor = "demo/other/uid-2" }},
		{"out of sequence", false, func(p *keywardenv1.Secret) { p.Seq = 2 }},
		{"truncated", false, func(p *keywardenv1.Secret) { p.Sealed = p.Sealed[:len(p.Sealed)-1] }},
		{"clear data beside the sealed payload", false, func(p *keywardenv1.Secret) { p.Data = map[string][]byte{"k": []byte("planted")} }},
		{"sealed to another key", false, func(p *keywardenv1.Secret) {
			other, _ := crypto.NewReplyKey()
			s, _ := crypto.NewReplySealer(other.PublicKey(), crypto.NewReplyNonce())
			p.Sealed, _ = s.Seal([]byte("x"), crypto.ReplyContext{})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.plain, f.tamper = tc.plain, tc.tamper
			f.mu.Unlock()
			s, err := c.Get(context.Background(), "db")
			if !errors.Is(err, ErrNotSealed) || s != nil {
				t.Fatalf("Get = %v, %v; want ErrNotSealed and no value", s, err)
			}
			var got []string
			err = c.Watch(context.Background(), []string{"db"}, func(s *Secret) error { got = append(got, s.Version); return nil })
			if !errors.Is(err, ErrNotSealed) || len(got) != 0 {
				t.Fatalf("Watch = %v after %v; want ErrNotSealed before any value", err, got)
			}
			f.mu.Lock()
			f.watches = 0
			f.mu.Unlock()
		})
	}
	f.mu.Lock()
	f.plain, f.tamper = true, nil
	f.mu.Unlock()
	plain, _ := New(serve(t, f), WithToken("t"), WithoutSealing())
	defer plain.Close()
	if s, err := plain.Get(context.Background(), "db"); err != nil || string(s.Data["k"]) != "v" {
		t.Fatalf("WithoutSealing Get = %v, %v", s, err)
	}
}
