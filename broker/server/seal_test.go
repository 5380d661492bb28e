package server_test

import (
	"bytes"
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/crypto"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// A request with a reply key gets the secret sealed to it: no value in clear on the wire, the
// clear fields bound into the ciphertext, and a grant can require it.
func TestSecretService_sealedResponses(t *testing.T) {
	s := newStack(t)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+s.token(t, "demo", "app"))
	raw := s.rawConn(t)
	key, err := crypto.NewReplyKey()
	if err != nil {
		t.Fatal(err)
	}
	nonce := crypto.NewReplyNonce()
	resp, err := raw.GetSecret(ctx, &keywardenv1.GetSecretRequest{Name: "demo-db", ReplyKey: &keywardenv1.ReplyKey{PublicKey: key.PublicKey(), Nonce: nonce}})
	if err != nil {
		t.Fatal(err)
	}
	wire, _ := proto.Marshal(resp)
	p := resp.GetSecret()
	if bytes.Contains(wire, []byte(secretValue)) || len(p.GetData()) != 0 || len(p.GetSealed()) == 0 {
		t.Fatalf("the response is not sealed: %d clear keys, %d sealed bytes", len(p.GetData()), len(p.GetSealed()))
	}
	if p.GetSeq() != 1 || p.GetSealedFor() != "spiffe://cluster.local/ns/demo/sa/app" {
		t.Fatalf("seq %d, sealed for %q", p.GetSeq(), p.GetSealedFor())
	}
	pt, err := key.Open(p.GetSealed(), crypto.ReplyContext{For: p.GetSealedFor(), Name: p.GetName(), Version: p.GetVersion(), Nonce: nonce, Seq: 1})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	var d keywardenv1.SecretData
	if err := proto.Unmarshal(pt, &d); err != nil || string(d.GetData()["password"]) != secretValue {
		t.Fatalf("sealed payload: %v", err)
	}

	for _, tc := range []struct {
		name string
		rk   *keywardenv1.ReplyKey
		msg  string
	}{
		{"no public key", &keywardenv1.ReplyKey{Nonce: nonce}, "reply_key: the public key must be 32 bytes (X25519), got 0"},
		{"short nonce", &keywardenv1.ReplyKey{PublicKey: key.PublicKey(), Nonce: []byte("short")}, "reply_key: the nonce must be 16 to 64 bytes, got 5"},
		{"low-order point", &keywardenv1.ReplyKey{PublicKey: make([]byte, 32), Nonce: nonce}, "reply_key: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := raw.GetSecret(ctx, &keywardenv1.GetSecretRequest{Name: "demo-db", ReplyKey: tc.rk})
			expectStatus(t, err, codes.InvalidArgument, tc.msg)
			stream, err := raw.WatchSecrets(ctx, &keywardenv1.WatchSecretsRequest{Names: []string{"demo-db"}, ReplyKey: tc.rk})
			if err == nil {
				_, err = stream.Recv()
			}
			expectStatus(t, err, codes.InvalidArgument, tc.msg)
		})
	}

	t.Run("a grant that requires sealing", func(t *testing.T) {
		tok := s.token(t, "demo", "sealer")
		if got, err := s.client(t, tok).Get(context.Background(), "demo-db"); err != nil || string(got.Data["password"]) != secretValue {
			t.Fatalf("sealed Get = %v, %v", got, err)
		}
		plain, err := client.New(s.socket, client.WithToken(tok), client.WithoutSealing())
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close()
		_, err = plain.Get(context.Background(), "demo-db")
		expectStatus(t, err, codes.PermissionDenied, "to read secret \"demo-db\" over GRPC; an administrator can run `keywarden grant explain --namespace demo --service-account sealer --secret demo-db`")
		// A sealed request that no grant allows: the explain hint names the sealed channel.
		_, err = s.client(t, s.token(t, "demo", "other")).Get(context.Background(), "demo-db")
		expectStatus(t, err, codes.PermissionDenied, "over GRPCSealed; an administrator can run `keywarden grant explain --namespace demo --service-account other --secret demo-db --delivery GRPCSealed`")
	})
}
