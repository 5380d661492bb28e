package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// keysPollInterval is how often `keys rotate --wait` asks for the status.
const keysPollInterval = 500 * time.Millisecond

func newKeysCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Rotate the keys that encrypt the daemon's stores, and show them"}
	cmd.AddCommand(newKeysRotateCommand(g), newKeysStatusCommand(g))
	return cmd
}

func newKeysRotateCommand(g *globals) *cobra.Command {
	var dek, kek, wait bool
	cmd := &cobra.Command{
		Use:   "rotate [--dek] [--kek] [--wait]",
		Short: "Rotate the stores' DEK keyset, the KEK, or both (the default), while the daemon serves",
		Long: `Rotate starts a key rotation in the daemon and returns; --wait follows it to the end.

--dek gives every store (state.db, node.db, volumes.db) a new primary DEK key, re-encrypts every record under
it in the background, in small transactions, and deletes the old keys once no record uses them.
--kek re-wraps every store's DEK keyset under a new KEK: with the local keyset file, a new key
is added to the file, every keyset re-wrapped, then the old key removed from the file; with
Vault Transit, every keyset is re-encrypted under the Transit key's latest version (rotate the
Transit key in Vault first: vault write -f transit/keys/<name>/rotate).

A daemon killed during a rotation opens its stores on the next start and finishes the rotation.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			if !dek && !kek {
				dek, kek = true, true
			}
			var st *keywardenv1.RotationStatusResponse
			err := g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				r, err := c.RotateKeys(ctx, &keywardenv1.RotateKeysRequest{Dek: dek, Kek: kek})
				st = r.GetStatus()
				return err
			})
			if err != nil {
				return err
			}
			if wait {
				if st, err = g.waitRotation(cmd.Context(), st); err != nil {
					return err
				}
			}
			if g.output == "json" {
				if err := printProtoJSON(g.stdout, st); err != nil {
					return err
				}
			} else {
				if !wait {
					fmt.Fprintln(g.stdout, "key rotation started; follow it with `keywarden keys status`")
				}
				printRotation(g.stdout, st)
			}
			if st.GetState() == "failed" {
				return errors.New("key rotation failed: " + st.GetLastError())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&dek, "dek", false, "rotate the stores' DEK keyset and re-encrypt every record")
	f.BoolVar(&kek, "kek", false, "re-wrap the DEK keysets under a new KEK (key version)")
	f.BoolVar(&wait, "wait", false, "wait until the rotation has finished (or failed)")
	addOutputFlag(cmd, g)
	return cmd
}

// waitRotation polls the status until the rotation is no longer running.
func (g *globals) waitRotation(ctx context.Context, st *keywardenv1.RotationStatusResponse) (*keywardenv1.RotationStatusResponse, error) {
	t := time.NewTicker(keysPollInterval)
	defer t.Stop()
	for st.GetState() == "running" {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		err := g.adminCall(ctx, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			var err error
			st, err = c.RotationStatus(ctx, &keywardenv1.RotationStatusRequest{})
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return st, nil
}

func newKeysStatusCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each store's keys and the state of the last key rotation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return g.adminCall(cmd.Context(), func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
				st, err := c.RotationStatus(ctx, &keywardenv1.RotationStatusRequest{})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printProtoJSON(g.stdout, st)
				}
				printRotation(g.stdout, st)
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

func printRotation(w io.Writer, st *keywardenv1.RotationStatusResponse) {
	line := "key rotation: " + st.GetState()
	if st.GetWhat() != "" {
		line += " (" + st.GetWhat()
		if st.GetResumed() {
			line += ", resumed after a restart"
		}
		line += ")"
	}
	if st.GetStartedAt() != nil {
		line += ", started " + st.GetStartedAt().AsTime().Format(time.RFC3339)
	}
	if st.GetFinishedAt() != nil {
		line += ", finished " + st.GetFinishedAt().AsTime().Format(time.RFC3339)
	}
	fmt.Fprintln(w, line)
	if st.GetLastError() != "" {
		fmt.Fprintf(w, "last error: %s\n", st.GetLastError())
	}
	kek := "kek: " + or(st.GetKekProvider(), "-")
	if st.GetKekKeys() > 0 {
		kek += fmt.Sprintf(" (%d key(s) in the keyset file)", st.GetKekKeys())
	}
	fmt.Fprintln(w, kek)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STORE\tPRIMARY DEK\tDEK KEYS\tWRAPPED BY\tRECORDS\tUNDER OLD KEYS\tRESEAL\tERROR")
	for _, s := range st.GetStores() {
		ids := make([]string, 0, len(s.GetKeyIds()))
		for _, id := range s.GetKeyIds() {
			ids = append(ids, fmt.Sprint(id))
		}
		reseal := "-"
		if s.GetResealPending() {
			reseal = fmt.Sprintf("pending (%d re-encrypted)", s.GetResealed())
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s\t%s\n", s.GetName(), s.GetPrimaryKeyId(), strings.Join(ids, ","), or(s.GetWrappedBy(), "-"),
			s.GetRecords(), s.GetStaleRecords(), reseal, or(s.GetError(), "-"))
	}
	_ = tw.Flush()
}
