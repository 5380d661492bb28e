package grant

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// logRecorder is a slog.Handler that keeps every record as one text line.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%q", a.Key, a.Value.String())
		return true
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, b.String())
	return nil
}

func (l *logRecorder) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func (l *logRecorder) count(substr string) int {
	n := 0
	for _, line := range l.all() {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// waitUntil polls cond. The bound only turns a hang into a failure; it asserts nothing about speed.
func waitUntil(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// writeFile replaces path atomically, as an editor or kubectl would.
func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

type fileSourceHarness struct {
	src     *FileSource
	clock   *clocktesting.FakeClock
	logs    *logRecorder
	changes chan *Set
}

// startFileSource builds a FileSource on path with a fake clock and runs it until the test ends.
func startFileSource(tb testing.TB, path string) *fileSourceHarness {
	tb.Helper()
	h := &fileSourceHarness{
		clock:   clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0)),
		logs:    &logRecorder{},
		changes: make(chan *Set, 16),
	}
	src, err := NewFileSource(FileSourceConfig{
		Path:     path,
		Interval: time.Second,
		Logger:   slog.New(h.logs),
		Clock:    h.clock,
		OnChange: func(s *Set) { h.changes <- s },
	})
	if err != nil {
		tb.Fatalf("NewFileSource: %v", err)
	}
	h.src = src
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run returned %v; want nil", err)
		}
	})
	return h
}

// tick fires one poll and waits until it has finished (the poll timer is armed again).
func (h *fileSourceHarness) tick(tb testing.TB) {
	tb.Helper()
	waitUntil(tb, "the poll timer", h.clock.HasWaiters)
	h.clock.Step(time.Second)
	waitUntil(tb, "the poll to finish", h.clock.HasWaiters)
}

func (h *fileSourceHarness) noChange(tb testing.TB) {
	tb.Helper()
	select {
	case s := <-h.changes:
		tb.Fatalf("unexpected OnChange with %d grants", s.Len())
	default:
	}
}

func grantNames(s *Set) string {
	var names []string
	for _, g := range s.Grants() {
		names = append(names, g.Name)
	}
	return strings.Join(names, ",")
}

func simpleGrant(name string) string {
	return grantDoc(name, specOf(`subjects: `+okSubjects, `secrets: `+okSecrets))
}

func TestFileSource_initialLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, simpleGrant("a")+"---\n"+simpleGrant("b"))
	h := startFileSource(t, path)
	if got := grantNames(h.src.Current()); got != "a,b" {
		t.Errorf("Current = %q; want a,b", got)
	}
	h.tick(t)
	h.noChange(t)
}

func TestFileSource_emptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, "")
	h := startFileSource(t, path)
	if h.src.Current() == nil || h.src.Current().Len() != 0 {
		t.Errorf("Current = %v; want an empty set", h.src.Current())
	}
}

// A file that shrinks to nothing — an editor's truncate-then-write caught half way, a
// ConfigMap emptied by mistake — would deny every workload at once. It is kept out until the
// file says "no grants" on purpose.
func TestFileSource_shrinkToEmptyKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, simpleGrant("a"))
	h := startFileSource(t, path)
	for _, empty := range []string{"", "\n  \n", "# all gone\n", "---\n---\n"} {
		writeFile(t, path, empty)
		h.tick(t)
		h.noChange(t)
		if got := grantNames(h.src.Current()); got != "a" {
			t.Fatalf("after writing %q: Current = %q; want the last good set a", empty, got)
		}
	}
	if n := h.logs.count("grants file is empty; keeping the last good grants"); n != 1 {
		t.Errorf("logged the empty file %d times; want once:\n%s", n, strings.Join(h.logs.all(), "\n"))
	}
	if n := h.logs.count("to remove every grant on purpose"); n != 1 {
		t.Errorf("the log does not say how to empty the file on purpose:\n%s", strings.Join(h.logs.all(), "\n"))
	}

	writeFile(t, path, "# every grant withdrawn\n[]\n")
	h.tick(t)
	select {
	case s := <-h.changes:
		if s.Len() != 0 {
			t.Fatalf("OnChange with %d grants; want 0", s.Len())
		}
	default:
		t.Fatal("an explicit empty list did not replace the grants")
	}
	if h.src.Current().Len() != 0 {
		t.Fatalf("Current = %q; want no grants", grantNames(h.src.Current()))
	}

	// Once empty on purpose, a new grant and then an empty file again: the same guard.
	writeFile(t, path, simpleGrant("b"))
	h.tick(t)
	<-h.changes
	writeFile(t, path, "")
	h.tick(t)
	h.noChange(t)
	if got := grantNames(h.src.Current()); got != "b" {
		t.Fatalf("Current = %q; want b", got)
	}
}

func TestFileSource_emptyListAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, "[]\n")
	h := startFileSource(t, path)
	if h.src.Current().Len() != 0 {
		t.Errorf("Current = %q; want no grants", grantNames(h.src.Current()))
	}
}

func TestNewFileSource_refusesToStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, simpleGrant("Bad_Name"))
	logger := slog.New(&logRecorder{})
	tests := []struct {
		name string
		cfg  FileSourceConfig
		is   error
		want string
	}{
		{"no path", FileSourceConfig{Logger: logger}, ErrInvalidConfig, "path is required"},
		{"no logger", FileSourceConfig{Path: bad}, ErrInvalidConfig, "logger is required"},
		{"negative interval", FileSourceConfig{Path: bad, Logger: logger, Interval: -time.Second}, ErrInvalidConfig, "interval must not be negative"},
		{"missing file", FileSourceConfig{Path: filepath.Join(dir, "nope.yaml"), Logger: logger}, ErrGrantsFile, "no such file or directory"},
		{"bad file", FileSourceConfig{Path: bad, Logger: logger}, ErrInvalidGrant, `metadata.name: "Bad_Name" is not a valid name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := NewFileSource(tt.cfg)
			if err == nil || src != nil {
				t.Fatalf("NewFileSource = %v, %v; want error", src, err)
			}
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v; want %v containing %q", err, tt.is, tt.want)
			}
		})
	}
}

func TestFileSource_Run_changePickedUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, simpleGrant("a"))
	h := startFileSource(t, path)
	writeFile(t, path, simpleGrant("a")+"---\n"+simpleGrant("b"))
	h.tick(t)
	got := <-h.changes
	if grantNames(got) != "a,b" || h.src.Current() != got {
		t.Errorf("after change: OnChange %q, Current %q; want a,b", grantNames(got), grantNames(h.src.Current()))
	}
	if h.logs.count("grants file reloaded") != 1 {
		t.Errorf("logs = %q", h.logs.all())
	}
	// Rewriting the same content is not a change.
	writeFile(t, path, simpleGrant("a")+"---\n"+simpleGrant("b"))
	h.tick(t)
	h.noChange(t)
}

func TestFileSource_Run_badChangeKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, simpleGrant("a"))
	h := startFileSource(t, path)
	before := h.src.Current()

	writeFile(t, path, grantDoc("a", specOf(`subjects: [{namespce: demo}]`, `secrets: `+okSecrets)))
	h.tick(t)
	h.tick(t) // a second poll of the same bad file is not logged again
	h.noChange(t)
	if h.src.Current() != before {
		t.Error("a bad file replaced the last good Set")
	}
	want := `WARN grants file rejected; keeping the last good grants path="` + path + `" error="document 1 (line 1): spec.subjects[0].namespce: unknown field: remove it or check its spelling; `
	if n := h.logs.count(want); n != 1 {
		t.Errorf("want exactly one log line\n  %s\ngot\n  %s", want, strings.Join(h.logs.all(), "\n  "))
	}

	// Fixing the file is picked up.
	writeFile(t, path, simpleGrant("fixed"))
	h.tick(t)
	if got := <-h.changes; grantNames(got) != "fixed" {
		t.Errorf("after fix: %q", grantNames(got))
	}
}

func TestFileSource_Run_fileRemovedKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, simpleGrant("a"))
	h := startFileSource(t, path)
	before := h.src.Current()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	h.tick(t)
	h.noChange(t)
	if h.src.Current() != before {
		t.Error("a removed file replaced the last good Set")
	}
	if n := h.logs.count(`grants file rejected; keeping the last good grants path="` + path + `" error="cannot read grants file: no such file or directory"`); n != 1 {
		t.Errorf("logs = %q", h.logs.all())
	}
	// The same file coming back is not a change; a new one is.
	writeFile(t, path, simpleGrant("a"))
	h.tick(t)
	h.noChange(t)
	writeFile(t, path, simpleGrant("b"))
	h.tick(t)
	if got := <-h.changes; grantNames(got) != "b" {
		t.Errorf("after restore: %q", grantNames(got))
	}
}

// A ConfigMap volume: grants.yaml → ..data/grants.yaml, ..data → ..<timestamp>/, swapped by
// renaming a new ..data symlink over the old one.
func TestFileSource_Run_configMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	writeVersion := func(version, content string) {
		vdir := filepath.Join(dir, version)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vdir, "grants.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(version, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..2026_01_01_00_00_00.1", simpleGrant("v1"))
	path := filepath.Join(dir, "grants.yaml")
	if err := os.Symlink("..data/grants.yaml", path); err != nil {
		t.Fatal(err)
	}
	h := startFileSource(t, path)
	if got := grantNames(h.src.Current()); got != "v1" {
		t.Fatalf("initial = %q", got)
	}
	writeVersion("..2026_01_01_00_00_01.2", simpleGrant("v2"))
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	h.tick(t)
	if got := <-h.changes; grantNames(got) != "v2" {
		t.Errorf("after swap: %q", grantNames(got))
	}
}

func TestFileSource_Run_tooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, simpleGrant("a"))
	h := startFileSource(t, path)
	writeFile(t, path, "# "+strings.Repeat("x", MaxDocumentSize))
	h.tick(t)
	h.noChange(t)
	if h.logs.count("larger than") != 1 {
		t.Errorf("logs = %q", h.logs.all())
	}
}

// Nothing of a grants file's values may reach an error or a log line: an administrator may
// paste a token or password into the wrong place. (Field names are repeated on purpose, in
// "unknown field" errors: they are how a typo is found.)
func TestFileSource_Run_neverLogsFileValues(t *testing.T) {
	const canary = "c4n4ry-s3cr3t-Zm9vYmFy"
	bad := []string{
		simpleGrant("a") + "token: " + canary + "\n",
		simpleGrant("a") + "status: {password: " + canary + "}\n",
		grantDoc("a", specOf(`subjects: [{namespace: [`+canary+`], serviceAccount: app}]`, `secrets: `+okSecrets)),
		grantDoc("a", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, files: [{key: k, path: p, mode: `+canary+`}]}]`)),
		grantDoc("a", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, refresh: {interval: [`+canary+`]}}]`)),
		"metadata: {name: a, annotations: " + canary + "}\n",
		"a: b: " + canary + "\n",
		"key: !!binary " + canary + "\n",
		"key: !!int " + canary + "\n",
		"key: !!bool " + canary + "\n",
		"key: &a [*a, " + canary + "]\n",
		"- " + canary + "\n",
		"\"" + canary + "\n",
		canary + "\n",
		"{" + canary + "\n",
		"key: [" + canary + "\n",
		"\t" + canary + ": x\n",
		"key: !!float " + canary + "\n",
		"key: !!timestamp " + canary + "\n",
		"key: !!null " + canary + "\n",
		"key: !!map " + canary + "\n",
		"key: !!seq " + canary + "\n",
		"key: !" + canary + " x\n",
		"key: *" + canary + "\n",
		"%YAML " + canary + "\n---\nkey: x\n",
		"[" + canary + ", " + canary + "]: x\n",
		"{" + canary + ": 1, " + canary + ": 2}\n",
	}
	path := filepath.Join(t.TempDir(), "grants.yaml")
	writeFile(t, path, simpleGrant("a"))
	h := startFileSource(t, path)
	wantLogs, lastErr := 0, ""
	for i, content := range bad {
		_, perr := Parse([]byte(content))
		if perr != nil && perr.Error() != lastErr {
			wantLogs, lastErr = wantLogs+1, perr.Error() // the same failure twice in a row is logged once
		}
		if perr == nil {
			t.Errorf("case %d: Parse accepted %q", i, content)
			continue
		}
		if strings.Contains(perr.Error(), canary) || strings.Contains(fmt.Sprintf("%+v %#v", perr, perr), canary) {
			t.Errorf("case %d: error leaks the value: %v", i, perr)
		}
		writeFile(t, path, content)
		h.tick(t)
	}
	h.noChange(t)
	if n := h.logs.count("grants file rejected"); n != wantLogs {
		t.Errorf("got %d rejection logs; want %d: %q", n, wantLogs, h.logs.all())
	}
	for _, line := range h.logs.all() {
		if strings.Contains(line, canary) {
			t.Errorf("log line leaks the value: %s", line)
		}
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%v %+v %#v", h.src.Current(), h.src.Current().Grants(), h.src.Current().Explain(Request{}))
	if strings.Contains(buf.String(), canary) {
		t.Error("the Set leaks the value")
	}
}
