package crypto

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/vault/api"
)

// fakeTransit emulates a Transit key: with derived=true the context selects the key, so a
// ciphertext only decrypts under the context it was made with (like Vault).
type fakeTransit struct {
	derived bool
	down    atomic.Bool
}

func (f *fakeTransit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.down.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"errors":["Vault is sealed secret-detail"]}`))
		return
	}
	reply := func(data map[string]any) { _ = json.NewEncoder(w).Encode(map[string]any{"data": data}) }
	var body map[string]string
	_ = json.NewDecoder(r.Body).Decode(&body)
	switch r.URL.Path {
	case "/v1/transit/keys/kek":
		reply(map[string]any{"derived": f.derived, "type": "aes256-gcm96"})
	case "/v1/transit/encrypt/kek":
		if f.derived && body["context"] == "" {
			w.WriteHeader(400)
			return
		}
		reply(map[string]any{"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString([]byte(body["context"]+"|"+body["plaintext"]))})
	case "/v1/transit/decrypt/kek":
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(body["ciphertext"], "vault:v1:"))
		ctx, pt, _ := strings.Cut(string(raw), "|")
		if f.derived && ctx != body["context"] {
			w.WriteHeader(400)
			_, _ = w.Write([]byte(`{"errors":["cipher: message authentication failed"]}`))
			return
		}
		reply(map[string]any{"plaintext": pt})
	default:
		w.WriteHeader(404)
	}
}

func transitClient(t *testing.T, h http.Handler) *api.Client {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := api.NewClient(&api.Config{Address: srv.URL, MaxRetries: 0})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("hvs.test")
	return c
}

func TestNewTransitKEK_wrongAssociatedDataFails(t *testing.T) {
	f := &fakeTransit{derived: true}
	kek, err := NewTransitKEK(context.Background(), TransitKEKConfig{Client: transitClient(t, f), Key: "kek"})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := kek.Encrypt([]byte("dek keyset"), []byte("ad-1"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := kek.Decrypt(ct, []byte("ad-1"))
	if err != nil || !bytes.Equal(pt, []byte("dek keyset")) {
		t.Fatalf("round trip: %q %v", pt, err)
	}
	for _, ad := range [][]byte{[]byte("ad-2"), nil} {
		if _, err := kek.Decrypt(ct, ad); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("decrypt with ad %q: %v, want ErrDecrypt", ad, err)
		}
	}
	if _, err := kek.Encrypt([]byte("x"), nil); err == nil {
		t.Fatal("encrypt with empty associated data accepted")
	}
	// As the KEK of a keyring.
	kr, wrapped, err := NewKeyring(kek)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyring(kek, wrapped); err != nil {
		t.Fatalf("open keyring: %v", err)
	}
	if s := fmt.Sprintf("%v %+v %#v %d", kek, kek, kek, kek); strings.Contains(s, "hvs.") || !strings.Contains(s, redacted) {
		t.Fatalf("kek prints %s", s)
	}
	_ = kr
}

func TestNewTransitKEK_refusesNonDerivedKey(t *testing.T) {
	_, err := NewTransitKEK(context.Background(), TransitKEKConfig{Client: transitClient(t, &fakeTransit{}), Key: "kek"})
	if !errors.Is(err, ErrTransitKeyNotDerived) {
		t.Fatalf("err = %v", err)
	}
}

func TestTransitKEK_unavailableIsNotDecryptError(t *testing.T) {
	f := &fakeTransit{derived: true}
	kek, err := NewTransitKEK(context.Background(), TransitKEKConfig{Client: transitClient(t, f), Key: "kek"})
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := kek.Encrypt([]byte("x"), []byte("ad"))
	f.down.Store(true)
	_, err = kek.Decrypt(ct, []byte("ad"))
	if !errors.Is(err, ErrKEKUnavailable) || errors.Is(err, ErrDecrypt) {
		t.Fatalf("err = %v, want ErrKEKUnavailable only", err)
	}
	if strings.Contains(err.Error(), "secret-detail") {
		t.Fatalf("error carries Vault's text: %v", err)
	}
	if _, err := NewTransitKEK(context.Background(), TransitKEKConfig{Client: transitClient(t, f), Key: "kek"}); !errors.Is(err, ErrKEKUnavailable) {
		t.Fatalf("start while sealed: %v", err)
	}
}

func TestNewTransitKEK_invalidConfig(t *testing.T) {
	c := transitClient(t, &fakeTransit{derived: true})
	for _, cfg := range []TransitKEKConfig{{Key: "kek"}, {Client: c}, {Client: c, Key: "a/b"}, {Client: c, Key: "k", Mount: "/transit"}} {
		if _, err := NewTransitKEK(context.Background(), cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}
