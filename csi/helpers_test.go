package csi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"

	"github.com/keywarden/keywarden/internal/testlog"
)

// fakeBroker is a hand-written Broker: tokens map to workloads, secrets are set by the test and
// every change wakes the watches.
type fakeBroker struct {
	mu        sync.Mutex
	tokens    map[string]identity.Workload
	secrets   map[string]*source.Secret
	denied    map[string]bool // secret name -> permission denied
	authErr   error           // returned by Authenticate when set
	getErr    error           // returned by GetSecret when set
	panicMsg  string          // Authenticate panics with it when set
	changed   chan struct{}
	grants    map[string][]string // grant name -> its secrets, for ExpandSecrets
	templates map[string][]grant.TemplateFile
	gets      int
	watchRuns int
	held      map[string]int // consumer id -> reads under it (broker.WithConsumer)
	released  []string       // ReleaseConsumer calls
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{tokens: map[string]identity.Workload{}, secrets: map[string]*source.Secret{}, denied: map[string]bool{},
		changed: make(chan struct{}), grants: map[string][]string{}, held: map[string]int{}}
}

func (b *fakeBroker) Authenticate(_ context.Context, tok identity.Token) (identity.Workload, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.panicMsg != "" {
		panic(b.panicMsg)
	}
	if b.authErr != nil {
		return identity.Workload{}, b.authErr
	}
	w, ok := b.tokens[tok.Reveal()]
	if !ok {
		return identity.Workload{}, brokerErr(broker.ErrUnauthenticated)
	}
	return w, nil
}

// brokerErr builds a broker error of the given kind, like the real broker's error type.
func brokerErr(kind error) error {
	return &kindErr{kind: kind}
}

// sourceErr builds a broker error caused by a source: like the real broker's, it Is both
// the broker kind and the source error class.
func sourceErr(kind, class error) error {
	return &kindErr{kind: kind, class: class}
}

type kindErr struct{ kind, class error }

func (e *kindErr) Error() string { return e.kind.Error() }
func (e *kindErr) Is(target error) bool {
	return target == e.kind || (e.class != nil && target == e.class)
}

func (b *fakeBroker) GetSecret(ctx context.Context, _ identity.Workload, name string, _ grant.Delivery) (*source.Secret, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gets++
	if id, ok := broker.ConsumerOf(ctx); ok {
		b.held[id]++
	}
	if b.getErr != nil {
		return nil, b.getErr
	}
	if b.denied[name] {
		return nil, brokerErr(broker.ErrPermissionDenied)
	}
	s, ok := b.secrets[name]
	if !ok {
		return nil, sourceErr(broker.ErrNotFound, source.ErrNotFound)
	}
	return s.Clone(), nil
}

func (b *fakeBroker) Watch(ctx context.Context, w identity.Workload, names []string, d grant.Delivery, send broker.SendFunc) error {
	b.mu.Lock()
	b.watchRuns++
	b.mu.Unlock()
	sent := map[string]string{}
	for {
		b.mu.Lock()
		ch := b.changed
		b.mu.Unlock()
		for _, n := range names {
			s, err := b.GetSecret(ctx, w, n, d)
			if err != nil {
				return err
			}
			if sent[n] == s.Version {
				continue
			}
			if err := send(n, s); err != nil {
				return err
			}
			sent[n] = s.Version
		}
		select {
		case <-ctx.Done():
			return brokerErr(broker.ErrCanceled)
		case <-ch:
		}
	}
}

func (b *fakeBroker) ExpandSecrets(grantName string, names []string) ([]string, error) {
	if grantName == "" {
		return names, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.grants[grantName]; ok {
		return s, nil
	}
	return nil, brokerErr(broker.ErrInvalidArgument)
}

func (b *fakeBroker) ReleaseConsumer(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.released = append(b.released, id)
	return 0
}

func (b *fakeBroker) GrantTemplates(grantName string) []grant.TemplateFile {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.templates[grantName]
}

// set stores a secret version and wakes the watches.
func (b *fakeBroker) set(name, version string, data map[string]string) {
	s := &source.Secret{Data: map[string]source.Value{}, Version: version}
	for k, v := range data {
		s.Data[k] = source.Value(v)
	}
	b.mu.Lock()
	b.secrets[name] = s
	b.wakeLocked()
	b.mu.Unlock()
}

func (b *fakeBroker) wakeLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *fakeBroker) deny(name string) {
	b.mu.Lock()
	b.denied[name] = true
	b.wakeLocked()
	b.mu.Unlock()
}

// env is a driver under test with a kubelet root, a real sealed store and a fake broker.
type env struct {
	t     testing.TB
	root  string // kubelet root
	dir   string
	db    *store.DB
	b     *fakeBroker
	d     *Driver
	logs  *testlog.Buffer
	mount Mounter
	// apiSocket is Config.APISocket; empty by default.
	apiSocket string
	// legacy is Config.LegacyStore; nil by default.
	legacy *store.DB
}

func openTestStore(tb testing.TB, dir string) *store.DB {
	tb.Helper()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		tb.Fatal(err)
	}
	// The volume store as the daemon opens it (cmd/keywarden: volumes.db, NoSync).
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "volumes.db"), KEK: kek, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	return db
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	dir := tb.TempDir()
	e := &env{t: tb, dir: dir, root: filepath.Join(dir, "kubelet"), b: newFakeBroker(), logs: &testlog.Buffer{}, mount: DirMounter{}}
	if err := os.MkdirAll(e.root, 0o755); err != nil {
		tb.Fatal(err)
	}
	e.db = openTestStore(tb, dir)
	tb.Cleanup(func() { _ = e.db.Close() })
	e.start()
	return e
}

// start builds a driver (a "daemon start") on the env's store and recovers its volumes.
func (e *env) start() {
	e.t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := New(Config{Broker: e.b, Store: e.db, LegacyStore: e.legacy, Mounter: e.mount, KubeletRoot: e.root, NodeID: "node-a", APISocket: e.apiSocket,
		Metrics: m, Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := d.Recover(); err != nil {
		e.t.Fatal(err)
	}
	e.d = d
	e.t.Cleanup(d.Close)
}

// pod registers a token for a pod and returns its UID and token.
func (e *env) pod(name string) (uid, token string) {
	uid = "uid-" + name
	token = "token-for-" + name + "-sekrit"
	e.b.mu.Lock()
	e.b.tokens[token] = identity.Workload{Namespace: "ns", ServiceAccount: "app", PodName: name, PodUID: uid, ExpiresAt: time.Now().Add(time.Hour)}
	e.b.mu.Unlock()
	return uid, token
}

func (e *env) target(uid, vol string) string {
	return filepath.Join(e.root, "pods", uid, "volumes", "kubernetes.io~csi", vol, "mount")
}

func volumeContext(name, uid, token string, attrs map[string]string) map[string]string {
	tokens, _ := json.Marshal(map[string]map[string]string{"keywarden": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})
	vc := map[string]string{CtxPodName: name, CtxPodNamespace: "ns", CtxPodUID: uid, CtxServiceAccount: "app", CtxEphemeral: "true", CtxTokens: string(tokens)}
	for k, v := range attrs {
		vc[k] = v
	}
	return vc
}

func (e *env) publish(name, vol string, attrs map[string]string) (PublishRequest, error) {
	uid, tok := e.pod(name)
	r := PublishRequest{VolumeID: "vol-" + name + "-" + vol, TargetPath: e.target(uid, vol), VolumeContext: volumeContext(name, uid, tok, attrs), GID: -1}
	return r, e.d.Publish(context.Background(), r)
}

func readFile(tb testing.TB, p string) string {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// eventually polls cond with a generous bound (no wall-clock assertion: only a ceiling).
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
