package crypto

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	gcmpb "github.com/tink-crypto/tink-go/v2/proto/aes_gcm_go_proto"
	"google.golang.org/protobuf/proto"
)

// rawKeys extracts the AES key bytes of every key in h (test-only access).
func rawKeys(tb testing.TB, h *keyset.Handle) [][]byte {
	tb.Helper()
	var keys [][]byte
	for _, k := range insecurecleartextkeyset.KeysetMaterial(h).GetKey() {
		var gk gcmpb.AesGcmKey
		if err := proto.Unmarshal(k.GetKeyData().GetValue(), &gk); err != nil {
			tb.Fatal(err)
		}
		if len(gk.GetKeyValue()) != 32 {
			tb.Fatalf("unexpected key size %d", len(gk.GetKeyValue()))
		}
		keys = append(keys, gk.GetKeyValue())
	}
	return keys
}

// render prints v through every fmt verb and slog handler a careless caller
// might use.
func render(v any) string {
	var b strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
		fmt.Fprintf(&b, verb+"\n", v)
	}
	fmt.Fprintln(&b, v)
	slog.New(slog.NewTextHandler(&b, nil)).Info("m", "k", v)
	slog.New(slog.NewJSONHandler(&b, nil)).Info("m", "k", v)
	return b.String()
}

func assertNoKeyBytes(tb testing.TB, out string, keys [][]byte) {
	tb.Helper()
	for _, k := range keys {
		for _, enc := range []string{
			string(k), hex.EncodeToString(k), strings.ToUpper(hex.EncodeToString(k)),
			base64.StdEncoding.EncodeToString(k), fmt.Sprint(k), fmt.Sprintf("%q", k),
		} {
			if strings.Contains(out, enc) {
				tb.Fatalf("key material leaked in output:\n%s", out)
			}
		}
	}
}

func TestKeyring_String_redacts(t *testing.T) {
	kr, _, _ := newTestKeyring(t)
	if _, err := kr.Rotate(); err != nil {
		t.Fatal(err)
	}
	_, h, _ := kr.current()
	keys := rawKeys(t, h)
	for _, v := range []any{kr, []any{kr}, struct{ K *Keyring }{kr}} {
		out := render(v)
		assertNoKeyBytes(t, out, keys)
		if !strings.Contains(out, redacted) {
			t.Fatalf("output does not show the redaction marker:\n%s", out)
		}
	}
}

func TestLocalKEK_String_redacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	kek, err := LoadOrCreateLocalKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		t.Fatal(err)
	}
	out := render(kek)
	assertNoKeyBytes(t, out, rawKeys(t, h))
	if !strings.Contains(out, redacted) {
		t.Fatalf("output does not show the redaction marker:\n%s", out)
	}
}

func TestKeyring_errors_carryNoPlaintext(t *testing.T) {
	kr, wrapped, kek := newTestKeyring(t)
	secret := []byte("hunter2-very-secret")
	ct, err := kr.Seal(secret, []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	_, err1 := kr.Open(ct, []byte("other"))
	_, err2 := kr.Open(flipBit(ct, 40), []byte("ad"))
	_, err3 := OpenKeyring(newTestKEK(t), wrapped)
	_, err4 := OpenKeyring(kek, flipBit(wrapped, 7))
	_, h, _ := kr.current()
	keys := rawKeys(t, h)
	for _, err := range []error{err1, err2, err3, err4} {
		if err == nil {
			t.Fatal("expected an error")
		}
		out := render(err)
		if strings.Contains(out, string(secret)) {
			t.Fatalf("plaintext in error: %s", out)
		}
		assertNoKeyBytes(t, out, keys)
	}
}
