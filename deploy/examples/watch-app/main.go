// Command watch-app is a minimal workload that reads secrets from the node's Keywarden daemon
// through the public Go client (github.com/keywarden/keywarden/client) instead of files.
//
// It dials the workload socket that the Keywarden CSI volume binds into the pod (keywarden.sock
// at the volume root, so /run/secrets/app/keywarden.sock when the volume is mounted at
// /run/secrets/app), authenticates with the pod's own projected service-account token for the
// audience "keywarden" (a file kubelet rotates in place; the client reads it again before every
// call), calls GetSecret once for each name and then follows them with WatchSecrets. Each value
// it receives is logged by name, VERSION, key names and expiry, never by value.
//
// Build and run it as the container of deploy/examples/watch-app/pod.yaml:
//
//	CGO_ENABLED=0 go build -o watch-app ./deploy/examples/watch-app
//	watch-app -socket /run/secrets/app/keywarden.sock \
//	  -token-file /var/run/secrets/tokens/keywarden -secrets api-key
//
// On a single machine, against `keywarden dev` (socket ./.keywarden-dev/keywarden.sock, token
// from `keywarden token --namespace demo --service-account app > demo.token`):
//
//	go run ./deploy/examples/watch-app -socket .keywarden-dev/keywarden.sock \
//	  -token-file demo.token -secrets demo-db
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole program; main only wires the process to it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("watch-app", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "/run/secrets/app/keywarden.sock", "the workload socket bound into the Keywarden CSI volume")
	tokenFile := fs.String("token-file", "/var/run/secrets/tokens/keywarden", "the pod's projected service-account token (audience keywarden)")
	names := fs.String("secrets", "api-key", "comma-separated secret names, as written in the AccessGrant")
	timeout := fs.Duration("get-timeout", 10*time.Second, "deadline of each GetSecret call")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))

	var list []string
	for n := range strings.SplitSeq(*names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			list = append(list, n)
		}
	}
	if len(list) == 0 {
		fmt.Fprintln(stderr, "watch-app: -secrets names no secret")
		return 2
	}

	c, err := client.New(*socket, client.WithTokenFile(*tokenFile))
	if err != nil {
		log.Error("client", slog.String("error", err.Error()))
		return 1
	}
	defer c.Close()

	// GetSecret: one answer per name. A denial here (no grant, wrong audience, pod not on this
	// node) is permanent for this configuration, so the program stops and says why.
	last := map[string]string{} // name → version last logged
	for _, n := range list {
		gctx, cancel := context.WithTimeout(ctx, *timeout)
		s, err := c.Get(gctx, n)
		cancel()
		if err != nil {
			logError(log, "get secret", n, err)
			return 1
		}
		logSecret(log, "secret read", s)
		last[s.Name] = s.Version
	}

	// WatchSecrets: the current value of every name first, then one call per new value.
	// client.Watch reconnects by itself after transient failures (the daemon restarting on an
	// upgrade, an expired token: the next attempt reads the rotated token file) and returns on
	// permanent ones (the grant was withdrawn) or when ctx ends.
	err = c.Watch(ctx, list, func(s *client.Secret) error {
		if last[s.Name] == s.Version {
			return nil // the stream starts with the current values, and again after a reconnect
		}
		last[s.Name] = s.Version
		logSecret(log, "secret version", s)
		// A real application swaps its connection pool, TLS config, ... to s.Data here.
		return nil
	})
	switch {
	case errors.Is(err, context.Canceled):
		log.Info("stopped")
		return 0
	case err != nil:
		logError(log, "watch ended", strings.Join(list, ","), err)
		return 1
	}
	return 0
}

// logSecret logs what changed without the value: name, version, key names and times.
func logSecret(log *slog.Logger, msg string, s *client.Secret) {
	attrs := []any{
		slog.String("secret", s.Name),
		slog.String("version", s.Version),
		slog.Any("keys", slices.Sorted(maps.Keys(s.Data))),
	}
	if !s.ExpiresAt.IsZero() {
		attrs = append(attrs, slog.Time("expires_at", s.ExpiresAt))
	}
	if !s.RenewAfter.IsZero() {
		attrs = append(attrs, slog.Time("renew_after", s.RenewAfter))
	}
	log.Info(msg, attrs...)
}

// logError logs a daemon error as its gRPC code and message. The daemon's messages never hold
// a token or a secret value; a PermissionDenied names the `keywarden grant explain` command an
// administrator can run.
func logError(log *slog.Logger, msg, secret string, err error) {
	st, _ := status.FromError(err)
	log.Error(msg, slog.String("secret", secret), slog.String("code", st.Code().String()), slog.String("message", st.Message()))
}
