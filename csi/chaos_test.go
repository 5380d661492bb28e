package csi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
	"github.com/keywarden/keywarden/internal/chaos"
	"github.com/keywarden/keywarden/internal/testlog"
)

// Environment of the publish kill -9 campaign's child.
const (
	// publishChaosEnv makes the test binary the publishing child; its value is the data dir.
	publishChaosEnv = "KEYWARDEN_CSI_CHAOS_DIR"
	// publishChaosModeEnv says how the child dies: "delay" (the parent kills it after a
	// random delay), "commit:N" (it kills itself just before its Nth store commit) or
	// "write:N" (just after its Nth volume's files are written, before the record).
	publishChaosModeEnv = "KEYWARDEN_CSI_CHAOS_MODE"

	publishChaosDefaultTrials = 30
	publishChaosMaxDelay      = 150 * time.Millisecond
	publishChaosMaxCommit     = 40
	publishChaosMaxWrite      = 12
	publishChaosAcks          = "acks.log"
	publishChaosBundle        = "all.json"
)

// Every secret of the campaign has these keys; each value names the secret, version and key,
// so a volume's files tell which payload version they came from.
var (
	publishChaosSecrets = []string{"db", "api", "cache"}
	publishChaosKeys    = []string{"a", "b", "c"}
)

func chaosValues(name, version string) map[string]string {
	m := map[string]string{}
	for _, k := range publishChaosKeys {
		m[k] = name + "|" + version + "|" + k
	}
	return m
}

// chaosMounter is TmpfsMounter when the tests run as root (the production shape), else
// DirMounter.
func chaosMounter() Mounter {
	if os.Geteuid() == 0 {
		return NewTmpfsMounter(1 << 20)
	}
	return DirMounter{}
}

// ackLog appends kubelet's view of the child's calls, each line fsynced before the next
// call, so the parent knows exactly what was acknowledged before the kill.
type ackLog struct{ f *os.File }

func (a ackLog) add(format string, args ...any) {
	if _, err := fmt.Fprintf(a.f, format+"\n", args...); err != nil {
		fmt.Fprintln(os.Stderr, "child ack:", err)
		os.Exit(2)
	}
	if err := a.f.Sync(); err != nil {
		fmt.Fprintln(os.Stderr, "child ack sync:", err)
		os.Exit(2)
	}
}

// runPublishChaosChild publishes, rotates and unpublishes volumes in a loop until it is
// killed. It starts from the volumes the parent left (none: the parent unpublishes all).
func runPublishChaosChild(dir string) {
	mode := os.Getenv(publishChaosModeEnv)
	kind, nStr, _ := strings.Cut(mode, ":")
	killAt, _ := strconv.ParseInt(nStr, 10, 64)
	die := func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	var commits, writes atomic.Int64
	kek, err := crypto.LoadLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child kek:", err)
		os.Exit(2)
	}
	// The volume store as the daemon opens it: without fsync (a kill -9 loses nothing the
	// page cache holds).
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "volumes.db"), KEK: kek, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NoSync: true,
		FailCommit: func() error {
			if kind == "commit" && commits.Add(1) == killAt {
				die()
			}
			return nil
		}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child store:", err)
		os.Exit(2)
	}
	t := &testing.T{}
	e := &env{t: t, dir: dir, root: filepath.Join(dir, "kubelet"), b: newFakeBroker(), logs: &testlog.Buffer{}, mount: chaosMounter(), db: db}
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(time.Now().UnixNano())))
	version := 0
	rotate := func(name string) {
		version++
		e.b.set(name, "c"+strconv.Itoa(version), chaosValues(name, "c"+strconv.Itoa(version)))
	}
	for _, n := range publishChaosSecrets {
		rotate(n)
	}
	e.start()
	e.d.afterWrite = func() {
		if kind == "write" && writes.Add(1) == killAt {
			die()
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, publishChaosAcks), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child acks:", err)
		os.Exit(2)
	}
	acks := ackLog{f}
	fmt.Fprintln(os.Stdout, "READY")
	var live []PublishRequest
	for i := 0; ; i++ {
		switch op := rng.IntN(10); {
		case op < 5 || len(live) == 0:
			names := slices.Clone(publishChaosSecrets[:1+rng.IntN(len(publishChaosSecrets))])
			pod := fmt.Sprintf("p%d-%d", os.Getpid(), i)
			uid, _ := e.pod(pod)
			acks.add("TRY %s %s %s %s", "vol-"+pod+"-secrets", e.target(uid, "secrets"), strings.Join(names, ","), pod)
			r, err := e.publish(pod, "secrets", chaosAttrs(names))
			if err != nil {
				fmt.Fprintln(os.Stderr, "child publish:", err)
				os.Exit(2)
			}
			acks.add("PUB %s %s %s", r.VolumeID, r.TargetPath, strings.Join(names, ","))
			live = append(live, r)
		case op < 8:
			rotate(publishChaosSecrets[rng.IntN(len(publishChaosSecrets))])
		default:
			j := rng.IntN(len(live))
			r := live[j]
			acks.add("UNTRY %s", r.VolumeID)
			if err := e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath); err != nil {
				fmt.Fprintln(os.Stderr, "child unpublish:", err)
				os.Exit(2)
			}
			acks.add("UNPUB %s", r.VolumeID)
			live = slices.Delete(live, j, j+1)
		}
	}
}

func chaosAttrs(names []string) map[string]string {
	return map[string]string{AttrSecrets: strings.Join(names, ","), AttrBundle: publishChaosBundle}
}

// ackedVolume is a volume kubelet was told is published (and not told is unpublished), or one
// whose publish it started and was not answered.
type ackedVolume struct {
	id, target string
	names      []string
	pod        string
}

// readAcks returns the acknowledged live volumes, the acknowledged unpublished targets, the
// publishes that were started but not acknowledged and the unpublishes likewise. A line the kill cut short was never
// written.
func readAcks(tb testing.TB, path string) (live map[string]ackedVolume, gone map[string]string, tried, untried map[string]ackedVolume) {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		tb.Fatal(err)
	}
	live, gone, tried, untried = map[string]ackedVolume{}, map[string]string{}, map[string]ackedVolume{}, map[string]ackedVolume{}
	s := string(b)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		s = ""
	}
	for line := range strings.SplitSeq(s, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 5 && f[0] == "TRY":
			tried[f[1]] = ackedVolume{id: f[1], target: f[2], names: strings.Split(f[3], ","), pod: f[4]}
		case len(f) == 4 && f[0] == "PUB":
			live[f[1]] = tried[f[1]]
			delete(tried, f[1])
		case len(f) == 2 && f[0] == "UNTRY":
			untried[f[1]] = live[f[1]]
			delete(live, f[1])
		case len(f) == 2 && f[0] == "UNPUB":
			gone[f[1]] = untried[f[1]].target
			delete(untried, f[1])
		case line == "":
		default:
			tb.Fatalf("ack log line %q", line)
		}
	}
	return live, gone, tried, untried
}

// volumeVersions reads the volume at target through its user paths, as a pod does (or, with
// target ending in "..data", the data directory in force). It
// returns each secret's version, or why the set is not one complete payload: a key missing,
// keys of one secret from two versions, a bundle that disagrees with the files.
func volumeVersions(target string, names []string) (map[string]string, error) {
	bundleRaw, err := os.ReadFile(filepath.Join(target, publishChaosBundle))
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var bundle map[string]map[string]string
	if err := json.Unmarshal(bundleRaw, &bundle); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if len(bundle) != len(names) {
		return nil, fmt.Errorf("bundle has %d secrets, want %d", len(bundle), len(names))
	}
	versions := map[string]string{}
	for _, n := range names {
		for _, k := range publishChaosKeys {
			b, err := os.ReadFile(filepath.Join(target, n, k))
			if err != nil {
				return nil, fmt.Errorf("file %s/%s: %w", n, k, err)
			}
			parts := strings.Split(string(b), "|")
			if len(parts) != 3 || parts[0] != n || parts[2] != k {
				return nil, fmt.Errorf("file %s/%s holds %q", n, k, b)
			}
			if v, ok := versions[n]; ok && v != parts[1] {
				return nil, fmt.Errorf("secret %s has keys of versions %s and %s", n, v, parts[1])
			}
			versions[n] = parts[1]
			if bundle[n][k] != string(b) {
				return nil, fmt.Errorf("bundle %s/%s = %q, file = %q", n, k, bundle[n][k], b)
			}
		}
	}
	return versions, nil
}

// TestDriver_killDashNineCampaign kills a daemon that publishes, rotates and unpublishes
// volumes, at random points: after a random delay, just before a random store commit, or
// between a random volume's files and its record. The parent then checks the files as the
// kill left them (every volume kubelet was told is published holds one complete payload; a
// volume it was told is unpublished is gone; no volume on disk is torn), restarts the driver
// on the same store, checks that it recovers every acknowledged volume and rotates it, and
// unpublishes everything on disk, which must leave nothing.
func TestDriver_killDashNineCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	trials := chaos.Trials(t, publishChaosDefaultTrials)
	dir := t.TempDir()
	root := filepath.Join(dir, "kubelet")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A mount a failed trial left behind would keep the temp dir from being removed.
		for _, target := range chaosTargets(t, root) {
			_ = syscall.Unmount(target, syscall.MNT_DETACH)
		}
	})
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 43))
	var kills, byDelay, byCommit, byWrite, retried, ackedPubs, ackedUnpubs, unacked, recovered, losses, torn, leftovers int
	for trial := range trials {
		mode := "delay"
		switch trial % 3 {
		case 1:
			mode = "commit:" + strconv.Itoa(1+rng.IntN(publishChaosMaxCommit))
			byCommit++
		case 2:
			mode = "write:" + strconv.Itoa(1+rng.IntN(publishChaosMaxWrite))
			byWrite++
		default:
			byDelay++
		}
		_ = os.Remove(filepath.Join(dir, publishChaosAcks))
		chaos.KillChild(t, []string{"-test.run=^$"}, []string{publishChaosEnv + "=" + dir, publishChaosModeEnv + "=" + mode}, func(line string, kill func()) {
			if line == "READY" && mode == "delay" {
				time.AfterFunc(time.Duration(rng.Int64N(int64(publishChaosMaxDelay))), kill)
			}
		})
		kills++

		// The files as the kill left them, before any driver touches them.
		live, gone, tried, untried := readAcks(t, filepath.Join(dir, publishChaosAcks))
		ackedPubs += len(live) + len(gone) + len(untried)
		ackedUnpubs += len(gone)
		for id, v := range live {
			if _, err := volumeVersions(v.target, v.names); err != nil {
				if _, serr := os.Lstat(filepath.Join(v.target, dataLink)); serr != nil {
					losses++
				} else {
					torn++
				}
				t.Errorf("trial %d (%s): acknowledged volume %s after the kill: %v", trial, mode, id, err)
			}
		}
		for id, target := range gone {
			if _, err := os.Lstat(target); !os.IsNotExist(err) {
				leftovers++
				t.Errorf("trial %d (%s): acknowledged unpublish of %s left %s: %v", trial, mode, id, target, err)
			}
		}
		for _, target := range chaosTargets(t, root) {
			id := chaosVolumeID(target)
			if _, ok := live[id]; ok {
				continue
			}
			if _, ok := untried[id]; ok {
				continue // an unpublish the kill interrupted: kubelet retries it below
			}
			v, ok := tried[id]
			if !ok {
				leftovers++
				t.Errorf("trial %d (%s): volume %s on disk that no publish in flight explains", trial, mode, target)
				continue
			}
			unacked++
			// A publish the kill interrupted: no data yet, or one complete set behind "..data".
			// Its user paths may be partly linked (killed between the swap and the links):
			// no pod reads it before kubelet's retry succeeds, and the retry links them.
			if _, err := os.Lstat(filepath.Join(target, dataLink)); err == nil {
				if _, err := volumeVersions(filepath.Join(target, dataLink), v.names); err != nil {
					torn++
					t.Errorf("trial %d (%s): unacknowledged volume %s is torn: %v", trial, mode, id, err)
				}
			}
		}

		// Restart on the same store: every acknowledged volume is recovered and rotated.
		e := &env{t: t, dir: dir, root: root, b: newFakeBroker(), logs: &testlog.Buffer{}, mount: chaosMounter()}
		ver := "r" + strconv.Itoa(trial)
		for _, n := range publishChaosSecrets {
			e.b.set(n, ver, chaosValues(n, ver))
		}
		e.db = openTestStore(t, dir)
		e.start()
		for id, v := range live {
			if e.d.get(id) == nil {
				losses++
				t.Errorf("trial %d (%s): acknowledged volume %s not recovered", trial, mode, id)
				continue
			}
			recovered++
			eventually(t, "volume "+id+" rotated after the restart", func() bool {
				got, err := volumeVersions(v.target, v.names)
				if err != nil {
					return false
				}
				for _, n := range v.names {
					if got[n] != ver {
						return false
					}
				}
				return true
			})
		}
		// kubelet retries the publishes it got no answer to; they succeed with the current
		// value. Then the pods go away: unpublishing every volume must leave nothing.
		for id, v := range tried {
			e.pod(v.pod)
			r := PublishRequest{VolumeID: id, TargetPath: v.target, VolumeContext: volumeContext(v.pod, "uid-"+v.pod, "token-for-"+v.pod+"-sekrit", chaosAttrs(v.names)), GID: -1}
			if err := e.d.Publish(context.Background(), r); err != nil {
				t.Fatalf("trial %d (%s): kubelet's retry of the interrupted publish of %s: %v", trial, mode, id, err)
			}
			retried++
			eventually(t, "retried volume "+id+" holds the current value", func() bool {
				got, err := volumeVersions(v.target, v.names)
				return err == nil && got[v.names[0]] == ver
			})
			live[id] = v
		}
		maps.Copy(live, untried)
		for id, v := range live {
			if err := e.d.Unpublish(context.Background(), id, v.target); err != nil {
				t.Fatalf("trial %d (%s): unpublish %s: %v", trial, mode, id, err)
			}
		}
		for _, target := range chaosTargets(t, root) {
			leftovers++
			id := chaosVolumeID(target)
			_, wasLive := live[id]
			_, wasUntried := untried[id]
			entries, _ := os.ReadDir(target)
			var names []string
			for _, en := range entries {
				names = append(names, en.Name())
			}
			mi, _ := os.ReadFile("/proc/self/mountinfo")
			t.Errorf("trial %d (%s): unpublish left %s (acknowledged %v, unpublish in flight %v, mounted %v, marker %v, entries %v)",
				trial, mode, target, wasLive && !wasUntried, wasUntried, strings.Contains(string(mi), " "+target+" "), ownsTarget(target, id), names)
		}
		if n := e.d.Volumes(); n != 0 {
			t.Errorf("trial %d (%s): %d volumes still managed after unpublishing all", trial, mode, n)
		}
		e.d.Close()
		if recs, err := e.d.volumes.List(); err != nil || len(recs) != 0 {
			t.Errorf("trial %d (%s): %d volume records left (%v)", trial, mode, len(recs), err)
		}
		if err := e.db.Close(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			break
		}
	}
	t.Logf("publish kill -9 campaign: %d trials, %d kills (%d after a random delay, %d before a random commit, %d between files and record), "+
		"%d acknowledged publishes (%d later unpublished), %d volumes recovered, %d interrupted publishes on disk, %d retried by kubelet, "+
		"%d losses, %d torn, %d left over", trials, kills, byDelay, byCommit, byWrite, ackedPubs, ackedUnpubs, recovered, unacked, retried, losses, torn, leftovers)
	chaos.Report(t, chaos.Result{Campaign: "kill -9 during CSI publish/rotate/unpublish", Trials: kills, Faults: kills, Losses: losses + leftovers, Torn: torn,
		Notes: fmt.Sprintf("%s volumes; %d acked publishes, %d recovered, %d interrupted publishes retried", mounterName(chaosMounter()), ackedPubs, recovered, retried)})
}

func mounterName(m Mounter) string {
	if _, ok := m.(*TmpfsMounter); ok {
		return "tmpfs"
	}
	return "dir"
}

// chaosTargets lists every volume target under the kubelet root.
func chaosTargets(tb testing.TB, root string) []string {
	tb.Helper()
	m, err := filepath.Glob(filepath.Join(root, "pods", "*", "volumes", "kubernetes.io~csi", "*", "mount"))
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// chaosVolumeID is the volume ID env.publish gives the volume at target
// (<root>/pods/uid-<pod>/volumes/kubernetes.io~csi/<vol>/mount).
func chaosVolumeID(target string) string {
	vol := filepath.Dir(target)
	uid := filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(vol))))
	return "vol-" + strings.TrimPrefix(uid, "uid-") + "-" + filepath.Base(vol)
}
