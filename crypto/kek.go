package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// maxLocalKEKSize bounds how much of a keyset file is read. A JSON AES-256-GCM
// keyset is a few hundred bytes; even hundreds of rotated keys fit easily.
const maxLocalKEKSize = 1 << 20

// localKEKMode is the only permission a local KEK file may have (owner
// read/write). Execute bits for the owner are tolerated, nothing for group or
// others is.
const localKEKMode fs.FileMode = 0o600

// kekAEAD wraps the Tink primitive built from a local keyset so that printing
// or logging it never dumps the AES key schedule held by Tink's structs.
type kekAEAD struct {
	redactor
	a tink.AEAD
}

var _ tink.AEAD = (*kekAEAD)(nil)

// Encrypt implements tink.AEAD.
func (k *kekAEAD) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	return k.a.Encrypt(plaintext, associatedData)
}

// Decrypt implements tink.AEAD.
func (k *kekAEAD) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	return k.a.Decrypt(ciphertext, associatedData)
}

func newKEKAEAD(h *keyset.Handle) (tink.AEAD, error) {
	a, err := aead.New(h)
	if err != nil {
		// Tink's message only names key types, never key bytes, but the type
		// is hidden behind our sentinel.
		return nil, fmt.Errorf("keyset is not an aead keyset: %w", ErrInvalidKeyset)
	}
	return &kekAEAD{redactor: redactor{name: "crypto.LocalKEK"}, a: a}, nil
}

// LoadLocalKEK reads a cleartext Tink AEAD keyset (JSON) from path and returns
// its primitive. It never creates the file: a missing file is an error that
// matches both ErrKEKNotFound and fs.ErrNotExist.
//
// The file must be a regular file not accessible by group or others
// (ErrInsecurePermissions). A file that is not a valid AEAD keyset (empty,
// truncated, another primitive) is ErrInvalidKeyset.
func LoadLocalKEK(path string) (tink.AEAD, error) {
	h, err := readLocalKEK(path)
	if err != nil {
		return nil, err
	}
	return newKEKAEAD(h)
}

// readLocalKEK reads and checks the keyset file at path (see LoadLocalKEK).
func readLocalKEK(path string) (*keyset.Handle, error) {
	return readKeysetFile(path, "local kek", ErrKEKNotFound)
}

// readKeysetFile reads a cleartext JSON keyset file that must be a regular file private to its
// owner; what names it in errors, and notFound is matched (with fs.ErrNotExist) when it is
// missing.
func readKeysetFile(path, what string, notFound error) (*keyset.Handle, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("load %s %s: %w: %w", what, path, notFound, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("load %s: %w", what, err)
	}
	defer f.Close()

	// Stat the open descriptor, not the path, so the checked file is the one
	// that is read (no swap between check and use).
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", what, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("load %s %s: not a regular file: %w", what, path, ErrInvalidKeyset)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("load %s: %s has mode %04o and is accessible by group or others; run `chmod 600 %s`: %w",
			what, path, perm, path, ErrInsecurePermissions)
	}

	data, err := io.ReadAll(io.LimitReader(f, maxLocalKEKSize+1))
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", what, err)
	}
	h, err := parseLocalKEKHandle(data)
	if err != nil {
		return nil, fmt.Errorf("load %s %s: %w", what, path, err)
	}
	return h, nil
}

// parseLocalKEK turns the bytes of a keyset file into an AEAD primitive.
func parseLocalKEK(data []byte) (tink.AEAD, error) {
	h, err := parseLocalKEKHandle(data)
	if err != nil {
		return nil, err
	}
	return newKEKAEAD(h)
}

func parseLocalKEKHandle(data []byte) (*keyset.Handle, error) {
	if len(data) > maxLocalKEKSize {
		return nil, fmt.Errorf("keyset file larger than %d bytes: %w", maxLocalKEKSize, ErrInvalidKeyset)
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		return nil, fmt.Errorf("not a json tink keyset: %w", ErrInvalidKeyset)
	}
	return h, nil
}

// LoadOrCreateLocalKEK is LoadLocalKEK, except that a missing file is created
// with a fresh AES256-GCM keyset (mode 0600). The parent directory must exist.
//
// Creation writes a temporary file in the same directory, fsyncs it, and
// hard-links it into place, then fsyncs the directory. Unlike rename, link
// fails when the target exists, so two processes racing to create the file
// cannot silently replace each other's key: the loser loads the winner's file.
// An existing but invalid file is never replaced.
func LoadOrCreateLocalKEK(path string) (tink.AEAD, error) {
	a, err := LoadLocalKEK(path)
	if err == nil || !errors.Is(err, ErrKEKNotFound) {
		return a, err
	}

	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("create local kek: parent directory: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("create local kek: parent %s is not a directory", dir)
	}

	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, fmt.Errorf("create local kek: new keyset: %w", ErrInvalidKeyset)
	}
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return nil, fmt.Errorf("create local kek: encode keyset: %w", ErrInvalidKeyset)
	}
	if err := publishFile(dir, path, buf.Bytes()); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it first; use its key.
			return LoadLocalKEK(path)
		}
		return nil, fmt.Errorf("create local kek: %w", err)
	}
	return newKEKAEAD(h)
}

// publishFile atomically creates path (mode 0600) with data. It returns an
// error matching fs.ErrExist when path already exists.
func publishFile(dir, path string, data []byte) error {
	tmpName, err := writeTemp(dir, data)
	if err != nil {
		return err
	}
	// The temp name is always removed: after a successful link the key lives
	// on under path; after a failure it must not linger.
	defer os.Remove(tmpName)
	if err := os.Link(tmpName, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// writeTemp writes data to a new 0600 file in dir, synced, and returns its name.
func writeTemp(dir string, data []byte) (name string, err error) {
	tmp, err := os.CreateTemp(dir, ".keywarden-kek-*.tmp") // created 0600
	if err != nil {
		return "", err
	}
	defer func() {
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(localKEKMode); err != nil {
		return "", err
	}
	if _, err := tmp.Write(data); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	return tmp.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
