package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
)

// outageKEK fails every call with crypto.ErrKEKUnavailable while down is set.
type outageKEK struct {
	tink.AEAD
	down atomic.Bool
}

func (k *outageKEK) Encrypt(pt, ad []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("fake transit: %w: vault unreachable", crypto.ErrKEKUnavailable)
	}
	return k.AEAD.Encrypt(pt, ad)
}

func (k *outageKEK) Decrypt(ct, ad []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("fake transit: %w: vault unreachable", crypto.ErrKEKUnavailable)
	}
	return k.AEAD.Decrypt(ct, ad)
}

func TestKEKUnavailable_cacheIsNotQuarantined(t *testing.T) {
	dir := t.TempDir()
	local, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	kek := &outageKEK{AEAD: local}
	cfg := store.Config{Path: filepath.Join(dir, nodeFile), KEK: kek, Logger: quietLogger()}
	db, err := store.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Put("leases", "l1", []byte("lease")); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	kek.down.Store(true)
	_, q, err := store.OpenOrQuarantine(cfg)
	err = kekUnavailable(err, cfg.Path, kekTransit)
	if err == nil || q != "" || !errors.Is(err, store.ErrKEKUnavailable) ||
		!strings.HasPrefix(err.Error(), "KEK unavailable") || !strings.Contains(err.Error(), "not quarantined") {
		t.Fatalf("open with the KEK down = (%q, %v)", q, err)
	}
	if m, _ := filepath.Glob(cfg.Path + ".corrupt-*"); len(m) != 0 {
		t.Fatalf("quarantined: %v", m)
	}
	other := errors.New("other")
	if got := kekUnavailable(other, cfg.Path, kekTransit); got != other {
		t.Fatalf("other errors are changed: %v", got)
	}
	kek.down.Store(false)
	db, err = store.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, err := db.Get("leases", "l1"); err != nil || string(v) != "lease" {
		t.Fatalf("persisted lease lost: %q %v", v, err)
	}
}
