package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// wantedCodes are the answers a workload request may get from a caller with a valid token:
// anything else (Internal, Unknown, Unauthenticated, a hang) is a bug in request handling.
var wantedCodes = map[codes.Code]bool{
	codes.OK: true, codes.InvalidArgument: true, codes.PermissionDenied: true,
	codes.NotFound: true, codes.ResourceExhausted: true,
}

// FuzzSecretService_requests decodes arbitrary bytes the way the gRPC server does (a
// GetSecretRequest, and a WatchSecretsRequest) and sends what decodes to the workload API as
// an authenticated caller. Every answer must be one of wantedCodes; a value is returned only
// for the secret the caller's grant names; no error message carries the secret's value; and a
// stream either delivers its first message or ends with an error, never hangs.
func FuzzSecretService_requests(f *testing.F) {
	seeds := []proto.Message{
		&keywardenv1.GetSecretRequest{Name: "demo-db"},
		&keywardenv1.GetSecretRequest{Name: "granted-missing"},
		&keywardenv1.GetSecretRequest{Name: "../etc"},
		&keywardenv1.GetSecretRequest{Name: "demo-db", ReplyKey: &keywardenv1.ReplyKey{PublicKey: make([]byte, 32), Nonce: make([]byte, 16)}},
		&keywardenv1.GetSecretRequest{Name: "demo-db", ReplyKey: &keywardenv1.ReplyKey{PublicKey: []byte{1}, Nonce: []byte{2}}},
		&keywardenv1.WatchSecretsRequest{Names: []string{"demo-db"}},
		&keywardenv1.WatchSecretsRequest{Names: []string{"demo-db", "demo-db"}},
		&keywardenv1.WatchSecretsRequest{Names: []string{"demo-db", "not-granted"}},
	}
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{0x12, 0x02, 0x0a, 0x00})

	s := newStackTB(f)
	tok := s.tokenTB(f, "demo", "app")
	api := rawConnTB(f, s)
	f.Fuzz(func(t *testing.T, raw []byte) {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok), 30*time.Second)
		defer cancel()

		var get keywardenv1.GetSecretRequest
		if proto.Unmarshal(raw, &get) == nil {
			resp, err := api.GetSecret(ctx, &get)
			checkAnswer(t, "GetSecret", err)
			if err == nil && get.GetName() != "demo-db" {
				t.Fatalf("GetSecret(%q) was answered with a value", get.GetName())
			}
			if err == nil && get.GetReplyKey() == nil && string(resp.GetSecret().GetData()["password"]) != secretValue {
				t.Fatalf("GetSecret(demo-db) answered another value")
			}
		}

		var watch keywardenv1.WatchSecretsRequest
		if proto.Unmarshal(raw, &watch) == nil {
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			stream, err := api.WatchSecrets(wctx, &watch)
			if err == nil {
				var msg *keywardenv1.WatchSecretsResponse
				msg, err = stream.Recv()
				if err == nil && msg.GetSecret().GetName() != "demo-db" {
					t.Fatalf("WatchSecrets(%q) delivered %q", watch.GetNames(), msg.GetSecret().GetName())
				}
			}
			checkAnswer(t, "WatchSecrets", err)
		}
	})
	if strings.Contains(s.logs.String(), secretValue) {
		f.Fatal("the secret's value reached the logs")
	}
}

func checkAnswer(t *testing.T, call string, err error) {
	t.Helper()
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		t.Fatalf("%s hung: %v", call, err)
	}
	st := status.Convert(err)
	if !wantedCodes[st.Code()] {
		t.Fatalf("%s answered %v %q", call, st.Code(), st.Message())
	}
	if strings.Contains(st.Message(), secretValue) {
		t.Fatalf("%s error carries the secret's value", call)
	}
}
