package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keywarden/keywarden/broker/audit"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// errVerifyFailed makes `audit verify` exit 1 after printing the problems.
var errVerifyFailed = errors.New("audit log verification failed")

func newAuditCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read, verify and export the tamper-evident audit log"}
	cmd.AddCommand(newAuditTailCommand(g), newAuditVerifyCommand(g), newAuditExportCommand(g))
	return cmd
}

func newAuditTailCommand(g *globals) *cobra.Command {
	var req keywardenv1.AuditTailRequest
	cmd := &cobra.Command{
		Use:   "tail [--last N] [--follow]",
		Short: "Show the last audit entries, and with --follow new ones as they are written",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return g.adminStream(cmd.Context(), req.GetFollow(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				st, err := c.AuditTail(ctx, &req)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
				header := false
				for {
					m, err := st.Recv()
					if errors.Is(err, io.EOF) {
						return tw.Flush()
					}
					if err != nil {
						_ = tw.Flush()
						return err
					}
					if g.output == "json" {
						if _, err := fmt.Fprintln(g.stdout, string(m.GetJson())); err != nil {
							return err
						}
						continue
					}
					var e audit.Entry
					if err := json.Unmarshal(m.GetJson(), &e); err != nil {
						return fmt.Errorf("decode audit entry %d: %w", m.GetSeq(), err)
					}
					if !header {
						fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tOUTCOME\tWHO\tSECRET\tGRANT\tDETAIL")
						header = true
					}
					printEntryRow(tw, &e)
					if req.GetFollow() {
						_ = tw.Flush() // show each entry as it arrives
					}
				}
			})
		},
	}
	cmd.Flags().Uint32Var(&req.Last, "last", 20, "how many existing entries to show first")
	cmd.Flags().BoolVarP(&req.Follow, "follow", "f", false, "keep printing new entries")
	addOutputFlag(cmd, g)
	return cmd
}

func printEntryRow(w io.Writer, e *audit.Entry) {
	ts := e.Time.Local().Format(time.RFC3339)
	if cp := e.Checkpoint; cp != nil {
		fmt.Fprintf(w, "%d\t%s\tcheckpoint\t-\t-\t-\t-\tretention dropped %d entries through %d\n", e.Seq, ts, cp.Dropped, cp.DroppedThrough)
		return
	}
	ev := e.Event
	if ev == nil {
		fmt.Fprintf(w, "%d\t%s\t?\t-\t-\t-\t-\t-\n", e.Seq, ts)
		return
	}
	who := "-"
	switch {
	case ev.Actor != "":
		who = ev.Actor
	case ev.Namespace != "" || ev.ServiceAccount != "":
		who = ev.Namespace + "/" + ev.ServiceAccount
		if ev.PodName != "" {
			who += " (" + ev.PodName + ")"
		}
	case ev.SPIFFEID != "":
		who = ev.SPIFFEID
	}
	detail := ev.Reason
	if ev.Action != "" {
		detail = strings.TrimSpace(ev.Action + " " + detail)
	}
	if ev.Delivery != "" {
		detail = strings.TrimSpace(ev.Delivery + " " + detail)
	}
	if ev.Version != "" {
		detail = strings.TrimSpace(detail + " v" + ev.Version)
	}
	fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, ts, ev.Kind, ev.Outcome, who, or(ev.Secret, "-"), or(ev.Grant, "-"), or(detail, "-"))
}

func newAuditVerifyCommand(g *globals) *cobra.Command {
	var (
		file string
		av   anchorVerify
	)
	cmd := &cobra.Command{
		Use:   "verify [--file EXPORT.jsonl] [--anchor ANCHORS [--anchor-key FINGERPRINT] [--node NAME]]",
		Short: "Check the audit log's hash chain; exit 1 naming the first tampered entry",
		Long: `Check every entry's hash, the chain from entry to entry, the sequence numbers, the
retention checkpoint and the head record. Without --file the daemon checks its log; with
--file an export written by 'keywarden audit export' is checked offline (an export has no head
record: compare the printed head with the one recorded at export time).

With --anchor the log is also checked against anchors the daemon published (audit.anchor):
JSON lines of anchor records or of the daemon's JSON log, or the output of
'kubectl get events.events.k8s.io -n NAMESPACE -l keywarden.io/audit-anchor -o json'. Every
anchored entry must still be in the log with the anchored hash, so a rewrite of the log by
someone holding the KEK is found if it touches an entry at or before one anchored before the
rewrite. Pin the node's anchor key with --anchor-key (the fingerprint the daemon logs at
start, "audit anchor key"); without it the key the anchors carry is trusted as found.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			if av.file == "" && (av.key != "" || av.node != "") {
				return errors.New("--anchor-key and --node need --anchor")
			}
			if av.file == "-" && file == "-" {
				return errors.New("--file and --anchor cannot both read standard input")
			}
			if av.file != "" {
				anchors, err := g.readAnchors(av.file)
				if err != nil {
					return err
				}
				av.anchors = anchors
			}
			if file != "" {
				return g.verifyFile(file, &av)
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				r, err := c.AuditVerify(ctx, &keywardenv1.AuditVerifyRequest{})
				if err != nil {
					return err
				}
				if g.output == "json" && (av.file == "" || !r.GetOk()) {
					if err := printProtoJSON(g.stdout, r); err != nil {
						return err
					}
				} else if g.output != "json" {
					problems := make([]audit.Problem, 0, len(r.GetProblems()))
					for _, p := range r.GetProblems() {
						problems = append(problems, audit.Problem{Seq: p.GetSeq(), Kind: audit.ProblemKind(p.GetKind()), Detail: p.GetDetail()})
					}
					printVerify(g.stdout, r.GetOk(), audit.Report{
						Entries: int(r.GetEntries()), First: r.GetFirstSeq(), Last: r.GetLastSeq(),
						Head: audit.Head{Seq: r.GetHeadSeq(), Hash: r.GetHeadHash()}, Checkpoints: int(r.GetCheckpoints()), DroppedThrough: r.GetDroppedThrough(),
					}, problems, int(r.GetMore()))
				}
				if !r.GetOk() {
					return errVerifyFailed
				}
				if av.file == "" {
					return nil
				}
				// The anchors are checked here, not by the daemon: against the entries it
				// exports. (For a node that may be compromised, check an export off the node.)
				var export bytes.Buffer
				if err := copyExport(ctx, c, &export, 0); err != nil {
					return err
				}
				return g.verifyExport(&export, &av, false)
			})
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "verify a JSON-lines export instead of the daemon's log (- for standard input)")
	cmd.Flags().StringVar(&av.file, "anchor", "", "also check against published anchors read from this file (- for standard input)")
	cmd.Flags().StringVar(&av.key, "anchor-key", "", "fingerprint of the node's anchor key, as the daemon logged it at start")
	cmd.Flags().StringVar(&av.node, "node", "", "the node whose log this is (needed when the anchors are of several nodes)")
	addOutputFlag(cmd, g)
	return cmd
}

// anchorVerify is the --anchor part of `audit verify`.
type anchorVerify struct {
	file, key, node string
	anchors         []audit.Anchor
}

func (g *globals) readAnchors(file string) ([]audit.Anchor, error) {
	var r io.Reader = g.stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	anchors, err := audit.ReadAnchors(r)
	if err != nil {
		return nil, fmt.Errorf("--anchor %s: %w", file, err)
	}
	return anchors, nil
}

func (g *globals) verifyFile(file string, av *anchorVerify) error {
	var r io.Reader = g.stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	return g.verifyExport(r, av, true)
}

// verifyExport checks an export, and the anchors when av has a file.
// printChain: print the chain's report too (the daemon's was printed already otherwise).
func (g *globals) verifyExport(r io.Reader, av *anchorVerify, printChain bool) error {
	var (
		rep  audit.Report
		arep *audit.AnchorReport
		err  error
	)
	if av.file != "" {
		var ar audit.AnchorReport
		rep, ar, err = audit.VerifyExportAnchored(r, av.anchors, audit.AnchorOptions{Node: av.node, KeyFingerprint: av.key})
		arep = &ar
	} else {
		rep, err = audit.VerifyExport(r)
	}
	var ve *audit.VerifyError
	switch {
	case errors.As(err, &ve):
		if g.output == "json" {
			b, _ := json.Marshal(map[string]any{"ok": false, "problems": ve.Problems, "more": ve.More})
			fmt.Fprintln(g.stdout, string(b))
		} else {
			printVerify(g.stdout, false, audit.Report{}, ve.Problems, ve.More)
		}
		return errVerifyFailed
	case err != nil:
		return err
	}
	if g.output == "json" {
		out := map[string]any{"ok": true, "report": rep}
		if arep != nil {
			out["anchors"] = arep
		}
		b, _ := json.Marshal(out)
		_, err := fmt.Fprintln(g.stdout, string(b))
		return err
	}
	if printChain {
		printVerify(g.stdout, true, rep, nil, 0)
	}
	if arep != nil {
		printAnchorReport(g.stdout, rep, arep)
	}
	return nil
}

func printAnchorReport(w io.Writer, rep audit.Report, a *audit.AnchorReport) {
	fmt.Fprintf(w, "anchors: OK, %d of node %s checked: %d matched", a.Anchors, a.Node, a.Matched)
	if a.Retained > 0 {
		fmt.Fprintf(w, ", %d matched through a retention checkpoint", a.Retained)
	}
	if a.Uncovered > 0 {
		fmt.Fprintf(w, ", %d of entries dropped by retention (not checkable)", a.Uncovered)
	}
	if a.Other > 0 {
		fmt.Fprintf(w, "; %d of other nodes ignored", a.Other)
	}
	fmt.Fprintln(w)
	if a.Pinned {
		fmt.Fprintf(w, "anchor key: %s (pinned)\n", a.Key)
	} else {
		fmt.Fprintf(w, "anchor key: %s (NOT pinned: compare it with the fingerprint recorded when the node was installed, and pass --anchor-key)\n", a.Key)
	}
	l := a.Latest
	fmt.Fprintf(w, "latest anchor: entry %d at %s", l.Seq, l.Time.Local().Format(time.RFC3339))
	if rep.Last > l.Seq {
		fmt.Fprintf(w, "; entries %d..%d are after it and not covered by any anchor", l.Seq+1, rep.Last)
	}
	fmt.Fprintln(w)
}

func printVerify(w io.Writer, ok bool, rep audit.Report, problems []audit.Problem, more int) {
	if !ok {
		fmt.Fprintln(w, "audit log: TAMPERED")
		for _, p := range problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
		if more > 0 {
			fmt.Fprintf(w, "  ... and %d more problems\n", more)
		}
		return
	}
	fmt.Fprintf(w, "audit log: OK, %d entries (%d..%d), %d checkpoints", rep.Entries, rep.First, rep.Last, rep.Checkpoints)
	if rep.DroppedThrough > 0 {
		fmt.Fprintf(w, ", entries 1..%d dropped by retention", rep.DroppedThrough)
	}
	fmt.Fprintf(w, "\nhead: %s\n", rep.Head)
}

func newAuditExportCommand(g *globals) *cobra.Command {
	var (
		from uint64
		out  string
	)
	cmd := &cobra.Command{
		Use:   "export [--from SEQ] [--out FILE]",
		Short: "Write the audit log as JSON lines (verify it later with `audit verify --file`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := g.stdout
			if out != "" && out != "-" {
				f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			return g.adminStream(cmd.Context(), false, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				if err := copyExport(ctx, c, w, from); err != nil {
					return err
				}
				// The head at export time, for the record: an export cut at its end still
				// verifies, but no longer ends at this head.
				if s, err := c.GetStatus(ctx, &keywardenv1.GetStatusRequest{}); err == nil && s.GetAudit().GetEnabled() {
					fmt.Fprintf(g.stderr, "audit head at export: %d:%s\n", s.GetAudit().GetHeadSeq(), s.GetAudit().GetHeadHash())
				}
				return nil
			})
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "first entry to export (default: the oldest kept)")
	cmd.Flags().StringVar(&out, "out", "", "write to FILE (created 0600) instead of standard output")
	return cmd
}

// adminStream is adminCall for streams: no deadline when follow is set.
func (g *globals) adminStream(ctx context.Context, follow bool, f func(context.Context, keywardenv1.AdminServiceClient) error) error {
	if !follow {
		return g.adminCall(ctx, f)
	}
	return g.adminCall(context.WithoutCancel(ctx), func(_ context.Context, c keywardenv1.AdminServiceClient) error {
		return f(ctx, c)
	})
}

func newRotateCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate SECRET",
		Short: "Fetch a secret again from its source now; every watcher and volume on the node gets it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				r, err := c.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: args[0]})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printProtoJSON(g.stdout, r)
				}
				tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SOURCE\tPATH\tVERSION\tERROR")
				failed := false
				for _, s := range r.GetSources() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.GetSource(), s.GetPath(), or(s.GetVersion(), "-"), or(s.GetError(), "-"))
					failed = failed || s.GetError() != ""
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				if failed {
					return fmt.Errorf("secret %s: some sources could not be fetched", args[0])
				}
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

func newRevokeCommand(g *globals) *cobra.Command {
	var req keywardenv1.RevokeRequest
	cmd := &cobra.Command{
		Use:   "revoke (--secret NAME | --namespace NS --service-account SA | --spiffe-id ID) [--lift]",
		Short: "Stop delivery of a secret to everyone, or of every secret to one workload, at once",
		Long: `Revoke puts a Deny grant named revoked.* in force: open watch streams end with
PermissionDenied, requests are refused, cached values of a revoked secret are dropped. It shows
in 'keywarden grant list' and 'grant explain'. --lift removes it. Revocations are kept in the
daemon's encrypted state store and stay in force across restarts until lifted; the audit log
keeps the record.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				r, err := c.Revoke(ctx, &req)
				if err != nil {
					return err
				}
				if req.GetLift() {
					_, err = fmt.Fprintf(g.stdout, "revocation %s lifted\n", r.GetRevocation())
					return err
				}
				_, err = fmt.Fprintf(g.stdout, "revocation %s in force (%d cached values dropped)\n", r.GetRevocation(), r.GetPurged())
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Secret, "secret", "", "secret name to revoke for every workload")
	f.StringVar(&req.Namespace, "namespace", "", "namespace of the workload to revoke")
	f.StringVar(&req.ServiceAccount, "service-account", "", "service account of the workload to revoke")
	f.StringVar(&req.SpiffeId, "spiffe-id", "", "SPIFFE ID of the workload to revoke")
	f.StringVar(&req.Reason, "reason", "", "why (recorded in the audit log)")
	f.BoolVar(&req.Lift, "lift", false, "remove the revocation instead")
	return cmd
}

// printStatusDetails adds the grant sources, revocations and audit log to `keywarden status`.
func printStatusDetails(w io.Writer, st *keywardenv1.GetStatusResponse) {
	if len(st.GetGrantSources()) > 0 {
		parts := make([]string, 0, len(st.GetGrantSources()))
		for _, s := range st.GetGrantSources() {
			parts = append(parts, fmt.Sprintf("%s=%d", s.GetSource(), s.GetGrants()))
		}
		fmt.Fprintf(w, "grant sources: %s\n", strings.Join(parts, " "))
	}
	if len(st.GetRevocations()) > 0 {
		fmt.Fprintf(w, "revocations: %s\n", strings.Join(st.GetRevocations(), ", "))
	}
	if ls := st.GetVaultLeases(); len(ls) > 0 {
		fmt.Fprintf(w, "vault leases: %d\n", len(ls))
		for _, l := range ls {
			owner := l.GetOwner()
			if owner == "" {
				owner = "shared"
			}
			fmt.Fprintf(w, "  %s  %s  %s  owner %s  expires %s\n", l.GetLeaseId(), l.GetState(), l.GetPath(), owner, l.GetExpiresAt().AsTime().Format(time.RFC3339))
		}
	}
	a := st.GetAudit()
	switch {
	case a == nil:
	case !a.GetEnabled():
		fmt.Fprintln(w, "audit log: off (records go to the daemon's log)")
	default:
		fmt.Fprintf(w, "audit log: entries %d..%d, head %d:%s, pending %d, dropped %d, flush failures %d\n",
			a.GetFirstSeq(), a.GetHeadSeq(), a.GetHeadSeq(), shortHash(a.GetHeadHash()), a.GetPending(), a.GetDropped(), a.GetFlushFailures())
	}
}

func shortHash(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// copyExport writes the daemon's audit export, from entry from (0: the oldest kept), to w.
func copyExport(ctx context.Context, c keywardenv1.AdminServiceClient, w io.Writer, from uint64) error {
	st, err := c.AuditExport(ctx, &keywardenv1.AuditExportRequest{FromSeq: from})
	if err != nil {
		return err
	}
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(m.GetData()); err != nil {
			return err
		}
	}
}
