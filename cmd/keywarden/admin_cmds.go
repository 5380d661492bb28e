package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/client"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// adminCall dials the admin socket and runs f with a bounded context.
func (g *globals) adminCall(ctx context.Context, f func(context.Context, keywardenv1.AdminServiceClient) error) error {
	path := g.adminSocketPath()
	conn, err := grpc.NewClient(client.Target(path), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return f(ctx, keywardenv1.NewAdminServiceClient(conn))
}

func newSecretCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "secret", Short: "Manage secrets in the embedded store (dev and single machines)"}
	put := &cobra.Command{
		Use:   "put NAME KEY=VALUE|KEY=@FILE...",
		Short: "Write a new version of a secret; watchers and volumes get it at once",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			data := map[string][]byte{}
			for i, kv := range args[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					// Never echo the argument: it may be a value typed without its key.
					return usagef("argument %d: want KEY=VALUE or KEY=@FILE", i+2)
				}
				if _, dup := data[k]; dup {
					return usagef("key %q given twice", k)
				}
				if strings.HasPrefix(v, "@") {
					b, err := os.ReadFile(v[1:])
					if err != nil {
						return fmt.Errorf("key %q: %w", k, err)
					}
					data[k] = b
					continue
				}
				data[k] = []byte(v)
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				resp, err := c.PutSecret(ctx, &keywardenv1.PutSecretRequest{Name: args[0], Data: data})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(g.stdout, "secret %s: version %s\n", args[0], resp.GetVersion())
				return err
			})
		},
	}
	cmd.AddCommand(put)
	return cmd
}

func newGrantCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "grant", Short: "Inspect and manage access grants"}
	cmd.AddCommand(newGrantExplainCommand(g), newGrantListCommand(g), newGrantApplyCommand(g), newGrantDeleteCommand(g))
	return cmd
}

func newGrantExplainCommand(g *globals) *cobra.Command {
	var req keywardenv1.ExplainGrantRequest
	cmd := &cobra.Command{
		Use:   "explain --namespace NS --service-account SA --secret NAME",
		Short: "Say whether a workload may read a secret, and which grant decides",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			if req.Secret == "" || (req.SpiffeId == "" && (req.Namespace == "" || req.ServiceAccount == "")) {
				return usagef("--secret and either --namespace with --service-account, or --spiffe-id, are required")
			}
			if strings.EqualFold(req.Delivery, "GRPCSealed") {
				req.Delivery = "GRPCSealed"
			} else {
				req.Delivery = strings.ToUpper(req.Delivery)
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				resp, err := c.ExplainGrant(ctx, &req)
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printProtoJSON(g.stdout, resp)
				}
				printExplain(g.stdout, &req, resp)
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Namespace, "namespace", "", "namespace of the workload")
	f.StringVar(&req.ServiceAccount, "service-account", "", "service account of the workload")
	f.StringVar(&req.SpiffeId, "spiffe-id", "", "SPIFFE ID of the workload (default from namespace and service account)")
	f.StringVar(&req.Secret, "secret", "", "secret name (required)")
	f.StringVar(&req.Delivery, "delivery", "GRPC", "delivery channel: GRPC, GRPCSealed or CSI")
	addOutputFlag(cmd, g)
	return cmd
}

func printExplain(w io.Writer, req *keywardenv1.ExplainGrantRequest, r *keywardenv1.ExplainGrantResponse) {
	verdict := "DENIED"
	if r.GetAllowed() {
		verdict = "ALLOWED"
	}
	who := r.GetSpiffeId()
	if req.GetNamespace() != "" {
		who = fmt.Sprintf("service account %q in namespace %q (%s)", req.GetServiceAccount(), req.GetNamespace(), r.GetSpiffeId())
	}
	fmt.Fprintf(w, "%s: %s reading secret %q over %s\n", verdict, who, req.GetSecret(), or(req.GetDelivery(), "GRPC"))
	if r.GetGrant() != "" {
		fmt.Fprintf(w, "decided by grant: %s\n", r.GetGrant())
	}
	fmt.Fprintf(w, "reason: %s\n", r.GetReason())
	if len(r.GetChecks()) == 0 {
		fmt.Fprintln(w, "grants considered: none (no grants are in force)")
	} else {
		fmt.Fprintln(w, "grants considered:")
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  GRANT\tEFFECT\tSUBJECT\tSECRET\tDELIVERY\tRESULT")
		for _, c := range r.GetChecks() {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", c.GetGrant(), c.GetEffect(), yes(c.GetSubjectMatched()), yes(c.GetSecretMatched()), yes(c.GetDeliveryMatched()), c.GetDetail())
		}
		_ = tw.Flush()
	}
	if r.GetHint() != "" {
		fmt.Fprintf(w, "hint: %s\n", r.GetHint())
	}
}

func yes(b bool) string {
	if b {
		return "match"
	}
	return "no"
}

func printProtoJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: false, EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func newGrantListCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the grants in force and where each comes from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				resp, err := c.ListGrants(ctx, &keywardenv1.ListGrantsRequest{})
				if err != nil {
					return err
				}
				if g.output == "json" {
					items := make([]json.RawMessage, 0, len(resp.GetGrants()))
					for _, gr := range resp.GetGrants() {
						items = append(items, gr.GetManifest())
					}
					b, err := json.Marshal(map[string]any{"items": items})
					if err != nil {
						return err
					}
					_, err = fmt.Fprintln(g.stdout, string(b))
					return err
				}
				tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSOURCE\tEFFECT")
				for _, gr := range resp.GetGrants() {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", gr.GetName(), gr.GetSource(), gr.GetEffect())
				}
				return tw.Flush()
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

func newGrantApplyCommand(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace grants in the daemon's own grant store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usagef("-f FILE is required (\"-\" reads standard input)")
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(io.LimitReader(g.stdin, 1<<20))
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				resp, err := c.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: data})
				if err != nil {
					return err
				}
				for _, n := range resp.GetNames() {
					fmt.Fprintf(g.stdout, "accessgrant/%s applied\n", n)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "grant manifest (YAML or JSON; - for standard input)")
	return cmd
}

func newGrantDeleteCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a grant from the daemon's own grant store",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				if _, err := c.DeleteGrant(ctx, &keywardenv1.DeleteGrantRequest{Name: args[0]}); err != nil {
					return err
				}
				_, err := fmt.Fprintf(g.stdout, "accessgrant/%s deleted\n", args[0])
				return err
			})
		},
	}
}

// printCachedSecrets prints one row per cached secret with its freshness, as durations from
// now: AGE since the value was fetched, EXPIRES and NEXT REFRESH in, FAILURES since the last
// successful refresh and LAST ERROR (a fixed reason). No value is part of the status.
func printCachedSecrets(w io.Writer, secrets []*keywardenv1.CachedSecret, now time.Time) error {
	if len(secrets) == 0 {
		return nil
	}
	in := func(ts *timestamppb.Timestamp, none string) string {
		if ts == nil {
			return none
		}
		d := ts.AsTime().Sub(now).Round(time.Second)
		if d <= 0 {
			return "due"
		}
		return "in " + d.String()
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tPATH\tVERSION\tAGE\tEXPIRES\tNEXT REFRESH\tFAILURES\tSUBSCRIBERS\tLAST ERROR")
	for _, s := range secrets {
		age := "-"
		if s.GetFetchedAt() != nil {
			age = now.Sub(s.GetFetchedAt().AsTime()).Round(time.Second).String()
		}
		exp := in(s.GetExpiresAt(), "never")
		if exp == "due" {
			exp = "expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.GetSource(), s.GetPath(), s.GetVersion(), age, exp,
			in(s.GetNextRefreshAt(), "-"), s.GetRefreshFailures(), s.GetSubscribers(), or(s.GetLastError(), "-"))
	}
	return tw.Flush()
}

func newStatusCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's state: grants, cached secrets, watch streams",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				st, err := c.GetStatus(ctx, &keywardenv1.GetStatusRequest{})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printProtoJSON(g.stdout, st)
				}
				fmt.Fprintf(g.stdout, "keywarden %s, up since %s\n", st.GetVersion(), st.GetStartedAt().AsTime().Format(time.RFC3339))
				fmt.Fprintf(g.stdout, "grants: %d   watch streams: %d   cached secrets: %d\n", st.GetGrants(), st.GetWatchStreams(), len(st.GetSecrets()))
				printStatusDetails(g.stdout, st)
				return printCachedSecrets(g.stdout, st.GetSecrets(), time.Now())
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}
