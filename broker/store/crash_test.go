package store

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/keywarden/keywarden/crypto"
)

// crashChildEnv, when set, turns the test binary into the writer child of
// TestDB_crashSafety; its value is the data directory.
const crashChildEnv = "KEYWARDEN_STORE_CRASH_CHILD_DIR"

// crashNoSyncEnv, when "1", makes the child open its store with Config.NoSync.
const crashNoSyncEnv = "KEYWARDEN_STORE_CRASH_NOSYNC"

const (
	crashTrials    = 20
	crashMaxAcks   = 40 // kill after 1..crashMaxAcks acknowledged puts
	crashChildCap  = 100000
	crashBucket    = "crash"
	crashAckPrefix = "ACK "
)

// crashValue is deterministic so the parent can verify content, and varies
// in size so commits split pages and reuse freed ones.
func crashValue(key string) []byte {
	n := 50 + len(key)*37%3000
	return []byte(strings.Repeat(key+";", n/len(key)))
}

// runCrashChild opens the store, puts keys forever and prints each key only
// after Put returned (committed and fsynced, or with NoSync in the page cache).
func runCrashChild(dir string) {
	kek, err := crypto.LoadLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child kek:", err)
		os.Exit(2)
	}
	db, err := Open(Config{
		Path:   filepath.Join(dir, "store.db"),
		KEK:    kek,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		NoSync: os.Getenv(crashNoSyncEnv) == "1",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	prefix := fmt.Sprintf("p%d-", os.Getpid())
	for i := range crashChildCap {
		key := fmt.Sprintf("%s%06d", prefix, i)
		if err := db.Put(crashBucket, key, crashValue(key)); err != nil {
			fmt.Fprintln(os.Stderr, "child put:", err)
			os.Exit(2)
		}
		// Some overwrites and deletes of unacknowledged scratch keys, so the
		// freelist is busy when the kill lands.
		if i%3 == 0 {
			_ = db.Put("scratch", "s", crashValue(key))
		}
		if i%5 == 0 {
			_ = db.Delete("scratch", "s")
		}
		// os.Stdout is unbuffered: the line is in the pipe when Put has
		// returned and before the next Put starts.
		fmt.Fprintln(os.Stdout, crashAckPrefix+key)
	}
	os.Exit(0)
}

// TestDB_crashSafety kills a writing child with SIGKILL and checks that every acknowledged
// commit is in the file, with fsync and with NoSync: a killed process loses nothing the
// kernel's page cache holds (only a power loss or kernel crash can lose NoSync commits).
func TestDB_crashSafety(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		runCrashChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	t.Run("fsync", func(t *testing.T) { crashSafety(t, false) })
	t.Run("noSync", func(t *testing.T) { crashSafety(t, true) })
}

func crashSafety(t *testing.T, noSync bool) {
	dir := t.TempDir()
	kek := testKEK(t, dir) // creates kek.json for the children
	cfg := Config{
		Path:   filepath.Join(dir, "store.db"),
		KEK:    kek,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		NoSync: noSync,
	}
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 42))
	var acked []string
	killed := 0
	for trial := range crashTrials {
		killAfter := 1 + rng.IntN(crashMaxAcks)
		cmd := exec.Command(os.Args[0], "-test.run=^TestDB_crashSafety$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		if noSync {
			cmd.Env = append(cmd.Env, crashNoSyncEnv+"=1")
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			key, ok := strings.CutPrefix(sc.Text(), crashAckPrefix)
			if !ok {
				continue
			}
			acked = append(acked, key)
			n++
			if n == killAfter {
				_ = cmd.Process.Kill() // SIGKILL
			}
			// Keep reading: acks written before the kill are still in the pipe.
		}
		_ = cmd.Wait()
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("trial %d: child was not killed by SIGKILL (acks %d, state %v): %s", trial, n, cmd.ProcessState, stderr.String())
		}
		killed++

		db, err := Open(cfg)
		if err != nil {
			t.Fatalf("trial %d: reopen after kill: %v", trial, err)
		}
		if err := db.Check(); err != nil {
			t.Fatalf("trial %d: Check: %v", trial, err)
		}
		for _, key := range acked {
			got, err := db.Get(crashBucket, key)
			if err != nil || string(got) != string(crashValue(key)) {
				t.Fatalf("trial %d: acknowledged %s lost: err %v", trial, key, err)
			}
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("0 acknowledged writes lost over %d kill -9 trials (%d acknowledged puts)", killed, len(acked))
}
