package keyrot

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
	"github.com/keywarden/keywarden/internal/chaos"
)

// Environment of the kill -9 campaign.
const (
	// chaosChildEnv turns the test binary into the rotating child; its value is the data dir.
	chaosChildEnv = "KEYWARDEN_KEYROT_CHAOS_CHILD_DIR"
	// chaosKillAtEnv makes the child SIGKILL itself just before its Nth commit ("0": the
	// parent kills it after a random delay instead).
	chaosKillAtEnv = "KEYWARDEN_KEYROT_CHAOS_KILL_AT"

	chaosDefaultTrials = 50
	chaosRecords       = 60 // per bucket and store: 240 records in all
	chaosBatch         = 8
	chaosMaxCommit     = 160 // about three full DEK+KEK rotations of both stores
	chaosMaxDelay      = 60 * time.Millisecond
)

// runChaosChild opens the stores and rotates both keys again and again while a writer
// rewrites records with their expected values, until it is killed.
func runChaosChild(dir string) {
	killAt, _ := strconv.ParseInt(os.Getenv(chaosKillAtEnv), 10, 64)
	var commits atomic.Int64
	kek, err := crypto.LoadLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child kek:", err)
		os.Exit(2)
	}
	var dbs []*store.DB
	var stores []NamedStore
	for _, n := range storeNames {
		db, err := store.Open(store.Config{
			Path: filepath.Join(dir, n+".db"), KEK: kek, Logger: discard(), ResealBatch: chaosBatch, NoSync: noSync(n),
			FailCommit: func() error {
				if commits.Add(1) == killAt {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {} // the signal is on its way
				}
				return nil
			},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "child open:", err)
			os.Exit(2)
		}
		dbs = append(dbs, db)
		stores = append(stores, NamedStore{Name: n, Store: db})
	}
	m, err := New(Config{Stores: stores, KEK: crypto.LocalKEKFile{Path: filepath.Join(dir, "kek.json")}, Logger: discard()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child manager:", err)
		os.Exit(2)
	}
	go func() { _ = m.Run(context.Background()) }() // finishes what the last trial left first
	go func() {
		rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 7))
		keys := recordKeys(chaosRecords)
		for {
			i, b, k := rng.IntN(len(dbs)), recordBuckets[rng.IntN(len(recordBuckets))], keys[rng.IntN(len(keys))]
			if err := dbs[i].Put(b, k, []byte(recordValue(storeNames[i], b, k))); err != nil {
				fmt.Fprintln(os.Stderr, "child put:", err)
				os.Exit(2)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	fmt.Fprintln(os.Stdout, "READY")
	for round := 0; ; round++ {
		for m.Start(Kinds{DEK: true, KEK: true}) != nil {
			time.Sleep(time.Millisecond) // a resumption is running
		}
		for m.Status().Running {
			time.Sleep(time.Millisecond)
		}
		if e := m.Status().LastError; e != "" {
			fmt.Fprintln(os.Stderr, "child rotation:", e)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stdout, "ROTATED", round)
	}
}

// TestManager_killDashNineCampaign kills a process that rotates the DEK of the stores (one without fsync) and the
// local KEK file, with writers running, at random points: after a random delay, or just before
// a randomly chosen commit. After every kill the stores must open from disk with the KEK file
// as it was left, and every record must decrypt to its value.
func TestManager_killDashNineCampaign(t *testing.T) {
	if dir := os.Getenv(chaosChildEnv); dir != "" {
		runChaosChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	trials := chaos.Trials(t, chaosDefaultTrials)
	dir := t.TempDir()
	seed(t, dir, chaosRecords)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 42))
	var kills, byCommit, byDelay, checked, rounds, midDEK, midKEK int
	for trial := range trials {
		killAt := 0
		if trial%2 == 0 {
			killAt = 1 + rng.IntN(chaosMaxCommit)
		}
		chaos.KillChild(t, []string{"-test.run=^TestManager_killDashNineCampaign$", "-test.count=1"},
			[]string{chaosChildEnv + "=" + dir, chaosKillAtEnv + "=" + strconv.Itoa(killAt)}, func(line string, kill func()) {
				switch {
				case line == "READY" && killAt == 0:
					time.AfterFunc(time.Duration(rng.Int64N(int64(chaosMaxDelay))), kill)
				case strings.HasPrefix(line, "ROTATED"):
					rounds++
				}
			})
		kills++
		if killAt > 0 {
			byCommit++
		} else {
			byDelay++
		}
		// What the kill interrupted, as the files say.
		if u, err := (crypto.LocalKEKFile{Path: filepath.Join(dir, "kek.json")}).Unfinished(); err != nil {
			t.Fatalf("trial %d: kek file after kill: %v", trial, err)
		} else if u {
			midKEK++
		}
		dbs := openStores(t, dir, nil)
		for _, db := range dbs {
			if ks, err := db.KeyStatus(); err != nil {
				t.Fatalf("trial %d: key status: %v", trial, err)
			} else if ks.ResealPending || len(ks.KeyIDs) > 1 {
				midDEK++
				break
			}
		}
		closeAll(t, dbs)
		checked += verify(t, dir, chaosRecords)
	}
	t.Logf("kill -9 campaign: %d trials, %d kills (%d before a random commit, %d after a random delay), %d completed rotations, "+
		"%d kills left a DEK rotation unfinished, %d a KEK rotation unfinished, %d records checked, 0 losses",
		trials, kills, byCommit, byDelay, rounds, midDEK, midKEK, checked)
	chaos.Report(t, chaos.Result{Campaign: "kill -9 during DEK+KEK rotation", Trials: trials, Faults: kills,
		Notes: fmt.Sprintf("%d records checked; %d kills mid-DEK, %d mid-KEK rotation", checked, midDEK, midKEK)})
}
