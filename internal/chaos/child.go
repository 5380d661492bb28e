package chaos

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childWatchdog bounds a child that is never killed: a hang turns into a failure.
const childWatchdog = 30 * time.Second

// KillChild runs the test binary again as a campaign's child, with args and env added to its
// own, and calls onLine with every line the child prints on stdout and a function that kills
// it with SIGKILL. It returns once the child has exited, and fails tb unless SIGKILL ended it:
// a child that finished on its own proves nothing about a crash.
func KillChild(tb testing.TB, args, env []string, onLine func(line string, kill func())) {
	tb.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	kill := func() { _ = cmd.Process.Kill() }
	watchdog := time.AfterFunc(childWatchdog, kill)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		onLine(sc.Text(), kill)
	}
	_ = cmd.Wait()
	watchdog.Stop()
	if ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		tb.Fatalf("child %v was not killed by SIGKILL (state %v): %s", env, cmd.ProcessState, stderr.String())
	}
}
