package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// LocalKEKFile rotates the local KEK keyset file in place. A rotation is two steps with the
// re-wrapping of every DEK keyset between them, so that the file holds, at every instant, a
// key that opens every store:
//
//  1. Rotate adds a fresh key to the file as primary and keeps the old ones;
//  2. the caller re-wraps the DEK keyset of every store with the AEAD Rotate returned;
//  3. Retire deletes every key but the primary from the file.
//
// Each step replaces the file atomically (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves the file before or after the step. A file left with several
// keys is an unfinished rotation (Unfinished): finish it by re-wrapping and calling Retire.
// A LocalKEKFile is not safe for concurrent use.
type LocalKEKFile struct {
	// Path is the keyset file, as given to LoadLocalKEK.
	Path string
}

// Rotate adds a fresh AES256-GCM key to the file as its primary and returns the AEAD of the
// new keyset: it encrypts under the new key and still decrypts under the old ones.
func (f LocalKEKFile) Rotate() (tink.AEAD, error) {
	h, err := readLocalKEK(f.Path)
	if err != nil {
		return nil, fmt.Errorf("rotate local kek: %w", err)
	}
	m := keyset.NewManagerFromHandle(h)
	id, err := m.Add(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, fmt.Errorf("rotate local kek: add key: %w", ErrInvalidKeyset)
	}
	if err := m.SetPrimary(id); err != nil {
		return nil, fmt.Errorf("rotate local kek: set primary: %w", ErrInvalidKeyset)
	}
	nh, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("rotate local kek: %w", ErrInvalidKeyset)
	}
	if err := f.write(nh); err != nil {
		return nil, fmt.Errorf("rotate local kek: %w", err)
	}
	return newKEKAEAD(nh)
}

// Retire deletes every key but the primary from the file and returns the AEAD of what is
// left. Call it only once every DEK keyset wrapped by this file is wrapped under the primary:
// a keyset wrapped under a deleted key can no longer be opened.
func (f LocalKEKFile) Retire() (tink.AEAD, error) {
	h, err := readLocalKEK(f.Path)
	if err != nil {
		return nil, fmt.Errorf("retire local kek keys: %w", err)
	}
	p, err := h.Primary()
	if err != nil {
		return nil, fmt.Errorf("retire local kek keys: no primary key: %w", ErrInvalidKeyset)
	}
	ids := keyIDs(h)
	if len(ids) == 1 {
		return newKEKAEAD(h)
	}
	m := keyset.NewManagerFromHandle(h)
	for _, id := range ids {
		if id != p.KeyID() {
			if err := m.Delete(id); err != nil {
				return nil, fmt.Errorf("retire local kek keys: delete key: %w", ErrInvalidKeyset)
			}
		}
	}
	nh, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("retire local kek keys: %w", ErrInvalidKeyset)
	}
	if err := f.write(nh); err != nil {
		return nil, fmt.Errorf("retire local kek keys: %w", err)
	}
	return newKEKAEAD(nh)
}

// Keys returns the id of the file's primary key and the ids of all its keys.
func (f LocalKEKFile) Keys() (primary uint32, all []uint32, err error) {
	h, err := readLocalKEK(f.Path)
	if err != nil {
		return 0, nil, err
	}
	p, err := h.Primary()
	if err != nil {
		return 0, nil, fmt.Errorf("local kek %s: no primary key: %w", f.Path, ErrInvalidKeyset)
	}
	return p.KeyID(), keyIDs(h), nil
}

// Unfinished reports whether the file holds more than one key: a rotation whose Retire has
// not run yet.
func (f LocalKEKFile) Unfinished() (bool, error) {
	_, all, err := f.Keys()
	if err != nil {
		return false, err
	}
	return len(all) > 1, nil
}

func (f LocalKEKFile) write(h *keyset.Handle) error {
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return fmt.Errorf("encode keyset: %w", ErrInvalidKeyset)
	}
	return replaceFile(filepath.Dir(f.Path), f.Path, buf.Bytes())
}

// replaceFile atomically replaces path (mode 0600) with data: a crash leaves either the old
// or the new content, never a mix.
func replaceFile(dir, path string, data []byte) error {
	tmpName, err := writeTemp(dir, data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		_ = os.Remove(tmpName)
		return err
	}
	if err := syncDir(dir); err != nil {
		return errors.Join(errors.New("sync directory after replacing the kek file"), err)
	}
	return nil
}

// Current loads the file as it is now (LoadLocalKEK).
func (f LocalKEKFile) Current() (tink.AEAD, error) { return LoadLocalKEK(f.Path) }
