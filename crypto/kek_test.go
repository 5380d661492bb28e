package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	"github.com/tink-crypto/tink-go/v2/tink"
)

func assertSameKey(tb testing.TB, a, b tink.AEAD) {
	tb.Helper()
	ct, err := a.Encrypt([]byte("probe"), []byte("ad"))
	if err != nil {
		tb.Fatal(err)
	}
	if pt, err := b.Decrypt(ct, []byte("ad")); err != nil || string(pt) != "probe" {
		tb.Fatalf("KEKs differ: Decrypt = (%q, %v)", pt, err)
	}
}

func TestLoadOrCreateLocalKEK_createsThenLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	a, err := LoadOrCreateLocalKEK(path)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %04o, want 0600", fi.Mode().Perm())
	}
	b, err := LoadOrCreateLocalKEK(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	assertSameKey(t, a, b)
	c, err := LoadLocalKEK(path)
	if err != nil {
		t.Fatalf("LoadLocalKEK: %v", err)
	}
	assertSameKey(t, a, c)
	assertOnlyFiles(t, filepath.Dir(path), "kek.json")
}

func TestLoadOrCreateLocalKEK_concurrentCreatorsAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	const n = 8
	keks := make([]tink.AEAD, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := LoadOrCreateLocalKEK(path)
			if err != nil {
				t.Error(err)
				return
			}
			keks[i] = a
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := 1; i < n; i++ {
		assertSameKey(t, keks[0], keks[i])
	}
	assertOnlyFiles(t, filepath.Dir(path), "kek.json")
}

func TestLoadLocalKEK_missingFileNotCreated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	_, err := LoadLocalKEK(path)
	if !errors.Is(err, ErrKEKNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want ErrKEKNotFound and fs.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q does not name the path", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("LoadLocalKEK created the file")
	}
}

func TestLoadOrCreateLocalKEK_missingParentFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope", "kek.json")
	if _, err := LoadOrCreateLocalKEK(path); err == nil {
		t.Fatal("created a KEK in a missing directory")
	}
}

func TestLoadLocalKEK_insecurePermissionsRefused(t *testing.T) {
	for _, mode := range []fs.FileMode{0o640, 0o604, 0o660, 0o644, 0o620, 0o602, 0o610, 0o666, 0o777} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kek.json")
			if _, err := LoadOrCreateLocalKEK(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(path)
			for name, load := range map[string]func(string) (tink.AEAD, error){
				"LoadLocalKEK": LoadLocalKEK, "LoadOrCreateLocalKEK": LoadOrCreateLocalKEK,
			} {
				a, err := load(path)
				if !errors.Is(err, ErrInsecurePermissions) || a != nil {
					t.Fatalf("%s err = %v, want ErrInsecurePermissions", name, err)
				}
				msg := err.Error()
				for _, want := range []string{path, fmt.Sprintf("%04o", mode), "chmod 600 " + path} {
					if !strings.Contains(msg, want) {
						t.Errorf("%s: error %q does not contain %q", name, msg, want)
					}
				}
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Fatal("keyset file was modified")
			}
		})
	}
}

func TestLoadLocalKEK_invalidKeysetRefused(t *testing.T) {
	macKeyset := func(tb testing.TB) []byte {
		h, err := keyset.NewHandle(mac.HMACSHA256Tag256KeyTemplate())
		if err != nil {
			tb.Fatal(err)
		}
		var buf bytes.Buffer
		if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
			tb.Fatal(err)
		}
		return buf.Bytes()
	}
	tests := []struct {
		name    string
		content func(testing.TB) []byte
	}{
		{"empty", func(testing.TB) []byte { return nil }},
		{"not json", func(testing.TB) []byte { return []byte("hello") }},
		{"empty json", func(testing.TB) []byte { return []byte("{}") }},
		{"mac keyset", macKeyset},
		{"too large", func(testing.TB) []byte { return bytes.Repeat([]byte(" "), maxLocalKEKSize+1) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kek.json")
			content := tt.content(t)
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			for name, load := range map[string]func(string) (tink.AEAD, error){
				"LoadLocalKEK": LoadLocalKEK, "LoadOrCreateLocalKEK": LoadOrCreateLocalKEK,
			} {
				if _, err := load(path); !errors.Is(err, ErrInvalidKeyset) {
					t.Fatalf("%s err = %v, want ErrInvalidKeyset", name, err)
				}
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, content) {
				t.Fatal("invalid keyset file was replaced")
			}
		})
	}
}

func TestLoadLocalKEK_directoryRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateLocalKEK(path); !errors.Is(err, ErrInvalidKeyset) {
		t.Fatalf("err = %v, want ErrInvalidKeyset", err)
	}
}

func assertOnlyFiles(tb testing.TB, dir string, want ...string) {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		tb.Fatalf("directory holds %v, want %v (temp files left behind?)", got, want)
	}
}

func FuzzParseLocalKEK(f *testing.F) {
	path := filepath.Join(f.TempDir(), "kek.json")
	if _, err := LoadOrCreateLocalKEK(path); err != nil {
		f.Fatal(err)
	}
	valid, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte("{}"))
	f.Add([]byte(`{"primaryKeyId":1,"key":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := parseLocalKEK(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidKeyset) || a != nil {
				t.Fatalf("parseLocalKEK = (%v, %v), want nil, ErrInvalidKeyset", a, err)
			}
			return
		}
		// Whatever parsed must be a working AEAD.
		ct, err := a.Encrypt([]byte("p"), nil)
		if err != nil {
			return // e.g. a keyset whose primary is disabled: usable for nothing, but no panic
		}
		if pt, err := a.Decrypt(ct, nil); err != nil || string(pt) != "p" {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}
