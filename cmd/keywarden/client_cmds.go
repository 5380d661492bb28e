package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/client"
)

const envTokenFile = "KEYWARDEN_TOKEN_FILE"

func newTokenCommand(g *globals) *cobra.Command {
	var req identity.DevTokenRequest
	var audiences []string
	var issuedAt string
	cmd := &cobra.Command{
		Use:   "token --namespace NS --service-account SA",
		Short: "Print a token from the dev issuer, shaped like a Kubernetes projected token",
		Long: `Print a token signed by the dev daemon's issuer (its key is in the data directory),
shaped like a Kubernetes projected service-account token bound to a pod. Only daemons that run
with this issuer (keywarden dev) accept it.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if req.Namespace == "" || req.ServiceAccount == "" {
				return usagef("--namespace and --service-account are required")
			}
			dir := g.resolvedDataDir()
			if dir == "" {
				return usagef("no dev data directory found: start `keywarden dev` in this directory, or pass --data-dir")
			}
			keyFile := filepath.Join(dir, "dev-issuer.jwk")
			if _, err := os.Stat(keyFile); errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no dev issuer key at %s: start `keywarden dev` first (or pass the right --data-dir)", keyFile)
			}
			iss, err := identity.LoadOrCreateDevIssuer(keyFile, devIssuer)
			if err != nil {
				return err
			}
			req.Audiences = audiences
			if issuedAt != "" {
				if req.Now, err = time.Parse(time.RFC3339, issuedAt); err != nil {
					return usagef("--issued-at: want an RFC 3339 time such as 2026-01-02T15:04:05Z")
				}
			}
			tok, err := iss.Issue(req)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(g.stdout, tok.Reveal())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Namespace, "namespace", "", "namespace of the workload (required)")
	f.StringVar(&req.ServiceAccount, "service-account", "", "service account of the workload (required)")
	f.StringVar(&req.PodName, "pod", "", "pod name (default <service-account>-dev)")
	f.StringVar(&req.PodUID, "pod-uid", "", "pod UID (default random)")
	f.StringVar(&req.NodeName, "node", "", "node name (default dev-node)")
	f.StringSliceVar(&audiences, "audience", nil, "audience (repeatable; default keywarden)")
	f.DurationVar(&req.TTL, "ttl", time.Hour, "lifetime of the token")
	f.StringVar(&issuedAt, "issued-at", "", "issue time (RFC 3339; default now): try expired or not-yet-valid tokens")
	return cmd
}

// tokenFlags are how client commands get the caller's token: never as a literal argument,
// which would show in the process list and shell history.
type tokenFlags struct {
	file  string
	token string
}

func (t *tokenFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&t.file, "token-file", "", "file holding the workload's token, read before every call (env "+envTokenFile+")")
	cmd.Flags().StringVar(&t.token, "token", "", "\"-\" reads the token from standard input")
}

func (t *tokenFlags) option(stdin io.Reader) (client.Option, error) {
	switch {
	case t.token != "" && t.token != "-":
		return nil, usagef("--token takes only \"-\" (read standard input); put the token in a file and use --token-file")
	case t.token == "-" && t.file != "":
		return nil, usagef("use either --token - or --token-file, not both")
	case t.token == "-":
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			return nil, fmt.Errorf("read token from standard input: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, errors.New("no token on standard input")
		}
		return client.WithToken(tok), nil
	}
	file := t.file
	if file == "" {
		file = os.Getenv(envTokenFile)
	}
	if file == "" {
		return nil, usagef("a token is required: --token-file FILE, or --token - to read standard input (make one with `keywarden token` in dev)")
	}
	return client.WithTokenFile(file), nil
}

func (g *globals) newClient(t *tokenFlags) (*client.Client, error) {
	opt, err := t.option(g.stdin)
	if err != nil {
		return nil, err
	}
	return client.New(g.workloadSocket(), opt)
}

func newGetCommand(g *globals) *cobra.Command {
	var t tokenFlags
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Print a secret as the workload that owns the token sees it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			c, err := g.newClient(&t)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			s, err := c.Get(ctx, args[0])
			if err != nil {
				return err
			}
			return printSecret(g.stdout, g.output, s)
		},
	}
	t.register(cmd)
	addOutputFlag(cmd, g)
	return cmd
}

func newWatchCommand(g *globals) *cobra.Command {
	var t tokenFlags
	cmd := &cobra.Command{
		Use:   "watch NAME...",
		Short: "Print secrets now and again every time they change",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			c, err := g.newClient(&t)
			if err != nil {
				return err
			}
			defer c.Close()
			err = c.Watch(cmd.Context(), args, func(s *client.Secret) error { return printSecret(g.stdout, g.output, s) })
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	t.register(cmd)
	addOutputFlag(cmd, g)
	return cmd
}

func addOutputFlag(cmd *cobra.Command, g *globals) {
	cmd.Flags().StringVarP(&g.output, "output", "o", "text", "output format: text or json")
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return usagef("--output must be text or json, not %q", o)
	}
	return nil
}

// secretJSON mirrors a Kubernetes Secret/ConfigMap: UTF-8 values in data, others base64 in
// binaryData.
type secretJSON struct {
	Name       string            `json:"name"`
	Version    string            `json:"version"`
	ExpiresAt  *time.Time        `json:"expiresAt,omitempty"`
	RenewAfter *time.Time        `json:"renewAfter,omitempty"`
	Data       map[string]string `json:"data,omitempty"`
	BinaryData map[string]string `json:"binaryData,omitempty"`
}

func printSecret(w io.Writer, format string, s *client.Secret) error {
	keys := make([]string, 0, len(s.Data))
	for k := range s.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if format == "json" {
		out := secretJSON{Name: s.Name, Version: s.Version, Data: map[string]string{}, BinaryData: map[string]string{}}
		if !s.ExpiresAt.IsZero() {
			out.ExpiresAt = &s.ExpiresAt
		}
		if !s.RenewAfter.IsZero() {
			out.RenewAfter = &s.RenewAfter
		}
		for _, k := range keys {
			if v := s.Data[k]; utf8.Valid(v) {
				out.Data[k] = string(v)
			} else {
				out.BinaryData[k] = base64.StdEncoding.EncodeToString(v)
			}
		}
		b, err := json.Marshal(out)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	expires := "never"
	if !s.ExpiresAt.IsZero() {
		expires = s.ExpiresAt.Format(time.RFC3339)
	}
	fmt.Fprintf(w, "secret %s  version %s  expires %s\n", s.Name, s.Version, expires)
	for _, k := range keys {
		v := s.Data[k]
		if utf8.Valid(v) {
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		} else {
			fmt.Fprintf(w, "  %s (base64): %s\n", k, base64.StdEncoding.EncodeToString(v))
		}
	}
	return nil
}
