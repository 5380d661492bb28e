package framework

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Port range for servers: below the Linux ephemeral range (32768+), so a port
// we probe is not taken a moment later by some client's outgoing connection.
const (
	portMin = 20000
	portMax = 32000
)

var (
	portsMu sync.Mutex
	// portsUsed remembers ports handed out in this test process so two
	// servers started back to back never get the same one.
	portsUsed = map[int]bool{}
)

// FreePort returns a port in 20000–32000 on 127.0.0.1 that was free a moment
// ago. Servers that lose the race are restarted on new ports by the Start
// functions.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// freePorts returns the first of n consecutive free ports.
func freePorts(n int) (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 200 {
		base := portMin + rand.IntN(portMax-portMin-n)
		ok := true
		for p := base; p < base+n; p++ {
			if portsUsed[p] || !portFree(p) {
				ok = false
				break
			}
		}
		if ok {
			for p := base; p < base+n; p++ {
				portsUsed[p] = true
			}
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d consecutive free ports in %d-%d", n, portMin, portMax)
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// startAttempts bounds how often a server is restarted after losing a port race.
const startAttempts = 4

// retryOnAddrInUse runs start until it succeeds, fails for a reason other
// than a port clash, or runs out of attempts.
func retryOnAddrInUse(start func() error) error {
	var err error
	for range startAttempts {
		if err = start(); err == nil || !errors.Is(err, errAddrInUse) {
			return err
		}
	}
	return err
}

// procOptions configures startProcess.
type procOptions struct {
	// Env is appended to a minimal environment (PATH, HOME=Dir).
	Env []string
	// Dir is the working directory and HOME.
	Dir string
	// Credential, when set, runs the process as another user.
	Credential *syscall.Credential
	// StopSignal is sent to the process group on teardown; default SIGTERM.
	StopSignal syscall.Signal
}

// Process is a server started by the framework. Its combined stdout and
// stderr go to a log file that is dumped into the test output when the test
// fails.
type Process struct {
	Name    string
	LogPath string

	cmd     *exec.Cmd
	logFile *os.File
	done    chan struct{}
	waitErr error
	stop    sync.Once
	stopSig syscall.Signal
}

// startProcess starts bin and registers its teardown (SIGTERM to the process
// group, SIGKILL after 10 s) and the log dump on failure.
func startProcess(t testing.TB, name, bin string, args []string, o procOptions) (*Process, error) {
	t.Helper()
	logDir, err := os.MkdirTemp("", "keywarden-e2e-log-")
	if err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	logPath := logDir + "/" + name + ".log"
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		_ = os.RemoveAll(logDir)
		return nil, fmt.Errorf("log file: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Dir = o.Dir
	home := o.Dir
	if home == "" {
		home = logDir
	}
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LANG=C", "TZ=UTC"}, o.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// Kill the server if the test binary dies (e.g. go test -timeout).
		Pdeathsig:  syscall.SIGKILL,
		Credential: o.Credential,
	}
	fmt.Fprintf(f, "# %s %s\n", bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		_ = os.RemoveAll(logDir)
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, logFile: f, done: make(chan struct{}), stopSig: o.StopSignal}
	if p.stopSig == 0 {
		p.stopSig = syscall.SIGTERM
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	// Cleanups run last-registered first: stop the process, then dump its
	// complete log, then remove it.
	t.Cleanup(func() {
		if t.Failed() {
			dumpLog(t, p)
		}
		_ = f.Close()
		_ = os.RemoveAll(logDir)
	})
	t.Cleanup(p.Stop)
	return p, nil
}

// Stop terminates the process group: SIGTERM (or the configured signal),
// then SIGKILL after 10 s. It is
// idempotent and safe after the process exited on its own.
func (p *Process) Stop() {
	p.stop.Do(func() {
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, p.stopSig)
		_ = syscall.Kill(-pgid, syscall.SIGCONT) // a paused process acts on the signal only when continued
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
		// Children that outlived the leader.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
}

// Kill sends SIGKILL to the process group at once — no graceful shutdown, like `kill -9` or
// the OOM killer — and waits for the leader to exit. A test uses it to prove that state
// survives a crash (see Daemon.Restart). Stop after Kill, and Kill after Stop, do nothing.
func (p *Process) Kill() {
	p.stop.Do(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
}

// Pause freezes the process group with SIGSTOP: it keeps its state (a dev Vault's in-memory
// storage) and its listening sockets, and every request to it hangs until Resume, the way a
// stopped server or a frozen VM behaves. Stop works on a paused process too.
func (p *Process) Pause() error { return syscall.Kill(-p.cmd.Process.Pid, syscall.SIGSTOP) }

// Pid is the process id (the daemon's, for reading its /proc entries).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Resume continues a process group frozen by Pause.
func (p *Process) Resume() error { return syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT) }

// Exited reports whether the process has exited, and its wait error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Log returns the process's log so far.
func (p *Process) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("<read log: %v>", err)
	}
	return string(b)
}

// dumpLines bounds a dumped log; the apiserver in particular is chatty.
const dumpLines = 400

func dumpLog(t testing.TB, p *Process) {
	t.Helper()
	t.Logf("===== %s log (last %d lines) =====\n%s\n===== end of %s log =====",
		p.Name, dumpLines, tail(p.Log(), dumpLines), p.Name)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("… %d earlier lines omitted …", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// waitReady polls ready every 100 ms until it returns nil, the process exits
// (ErrExited, or errAddrInUse when the log says so) or timeout passes
// (ErrNotReady). Errors carry the tail of the server's log.
func (p *Process) waitReady(timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if exited, werr := p.Exited(); exited {
			log := p.Log()
			if isAddrInUse(log) {
				p.Stop()
				return fmt.Errorf("%s: %w", p.Name, errAddrInUse)
			}
			return fmt.Errorf("%s: %w (%v); log tail:\n%s", p.Name, ErrExited, werr, tail(log, 40))
		}
		if last = ready(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log := p.Log()
			p.Stop()
			if isAddrInUse(log) {
				return fmt.Errorf("%s: %w", p.Name, errAddrInUse)
			}
			return fmt.Errorf("%s: %w after %s (last check: %v); log tail:\n%s", p.Name, ErrNotReady, timeout, last, tail(log, 40))
		}
		select {
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func isAddrInUse(log string) bool {
	return bytes.Contains([]byte(log), []byte("address already in use"))
}
