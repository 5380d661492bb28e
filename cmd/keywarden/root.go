package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// Environment variables the client commands read.
const (
	envSocket      = "KEYWARDEN_SOCKET"
	envAdminSocket = "KEYWARDEN_ADMIN_SOCKET"
	envDataDir     = "KEYWARDEN_DATA_DIR"
)

// defaultDevDataDir is where `keywarden dev` keeps its state, relative to the working directory.
const defaultDevDataDir = ".keywarden-dev"

// globals are the flags every command shares.
type globals struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	socket         string
	adminSocket    string
	dataDir        string
	output         string
}

func newRootCommand(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "keywarden",
		Short: "Node-level secrets broker for Kubernetes",
		Long: `Keywarden proves who a pod is from its projected service-account token, checks that
identity against access grants, fetches the secret and hands it over as short-lived files or
through a gRPC API on a node socket.

Try it on one machine with no cluster and no Vault:
  keywarden dev`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", "", "workload API socket (env "+envSocket+"; default <data-dir>/keywarden.sock, then "+defaultSocket+")")
	pf.StringVar(&g.adminSocket, "admin-socket", "", "admin API socket (env "+envAdminSocket+"; default <data-dir>/admin.sock, then "+defaultAdminSocket+")")
	pf.StringVar(&g.dataDir, "data-dir", "", "data directory of a dev daemon (env "+envDataDir+"; default ./"+defaultDevDataDir+" when it exists)")
	root.AddCommand(
		newDevCommand(g),
		newServeCommand(g),
		newTokenCommand(g),
		newGetCommand(g),
		newWatchCommand(g),
		newSecretCommand(g),
		newGrantCommand(g),
		newStatusCommand(g),
		newAuditCommand(g), newRotateCommand(g), newRevokeCommand(g), newKeysCommand(g),
		newVersionCommand(g),
	)
	return root
}

// resolvedDataDir is the data directory named by flag or env, or ./.keywarden-dev when it
// exists; empty when none applies.
func (g *globals) resolvedDataDir() string {
	if g.dataDir != "" {
		return g.dataDir
	}
	if v := os.Getenv(envDataDir); v != "" {
		return v
	}
	if fi, err := os.Stat(defaultDevDataDir); err == nil && fi.IsDir() {
		return defaultDevDataDir
	}
	return ""
}

func (g *globals) workloadSocket() string {
	return g.pick(g.socket, envSocket, "keywarden.sock", defaultSocket)
}

func (g *globals) adminSocketPath() string {
	return g.pick(g.adminSocket, envAdminSocket, "admin.sock", defaultAdminSocket)
}

func (g *globals) pick(flag, env, file, def string) string {
	if flag != "" {
		return flag
	}
	if v := os.Getenv(env); v != "" {
		return v
	}
	if dir := g.resolvedDataDir(); dir != "" {
		return filepath.Join(dir, file)
	}
	return def
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// usageError marks errors in how a command was called (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// printError prints an error for a person: gRPC errors as "code: message".
func printError(w io.Writer, err error) {
	if st, ok := status.FromError(err); ok && st.Code() != 0 {
		fmt.Fprintf(w, "error: %s: %s\n", st.Code(), st.Message())
		return
	}
	msg := err.Error()
	if !strings.HasSuffix(msg, "\n") {
		msg += "\n"
	}
	fmt.Fprint(w, "error: "+msg)
}

func exitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "flag") {
		return 2
	}
	return 1
}

func newVersionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(g.stdout, "keywarden", version)
			return err
		},
	}
}
