package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// devIssuer is the `iss` of tokens made by `keywarden token`.
const devIssuer = "https://dev.keywarden.local"

// demoGrants is written to <data-dir>/grants.yaml on first start; edit it while dev runs and the
// daemon reloads it.
const demoGrants = `# Grants of the keywarden dev daemon. Edit while it runs: changes apply within seconds.
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata:
  name: demo-app
spec:
  subjects:
    - namespace: demo
      serviceAccount: app
  secrets:
    - name: demo-db
      source:
        local: {}
`

func newDevCommand(g *globals) *cobra.Command {
	var healthAddr string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a single-machine daemon on the embedded default (no cluster, no Vault)",
		Long: `Run Keywarden on this machine with everything embedded: a secret store seeded with the
demo secret "demo-db", a development token issuer (see "keywarden token"), and a grants file that
lets namespace "demo", service account "app" read it. State lives in the data directory
(default ./` + defaultDevDataDir + `) and survives restarts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := g.dataDir
			if dir == "" {
				dir = defaultDevDataDir
			}
			cfg, err := devConfig(dir)
			if err != nil {
				return err
			}
			if healthAddr != "" {
				cfg.HealthAddr = healthAddr
			}
			// The demo secret is seeded before the sockets listen: a "get" that reaches
			// the daemon always finds it.
			return serve(cmd, g, cfg, func(d *daemon) {
				if err := seedDemo(cmd, d); err != nil {
					d.log.Error("seed demo secret", "error", err)
				}
			}, func(*daemon) { printDevHelp(g, dir) })
		},
	}
	cmd.Flags().StringVar(&healthAddr, "health-addr", "", "serve /healthz, /readyz and /metrics on host:port (default off)")
	return cmd
}

// devConfig is the embedded default: everything in one private directory.
func devConfig(dir string) (config, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return config{}, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return config{}, fmt.Errorf("create data dir: %w", err)
	}
	grants := filepath.Join(abs, "grants.yaml")
	if _, err := os.Stat(grants); errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(grants, []byte(demoGrants), 0o600); err != nil {
			return config{}, fmt.Errorf("write demo grants: %w", err)
		}
	}
	enabled, off := true, false
	raw := rawConfig{
		DataDir:     abs,
		Socket:      rawSocket{Path: filepath.Join(abs, "keywarden.sock"), Mode: "0600"},
		AdminSocket: rawSocket{Path: filepath.Join(abs, "admin.sock")},
		Health:      rawHealth{Addr: "off"},
		// No cluster: tokens come from the dev issuer and no pod list exists to bind them to.
		Identity: rawIdentity{Issuer: devIssuer, DevIssuerKeyFile: filepath.Join(abs, "dev-issuer.jwk"),
			rawIdentityRemote: rawIdentityRemote{NodeBinding: &off}},
		Grants:  rawGrants{File: grants, ReloadInterval: "1s"},
		Sources: rawSources{Local: rawLocal{Enabled: &enabled}},
		Log:     rawLog{Level: "info", Format: "text"},
	}
	return raw.typed()
}

// seedDemo writes the demo secret unless it exists, so a restart keeps the user's changes.
func seedDemo(cmd *cobra.Command, d *daemon) error {
	pw := make([]byte, 18)
	if _, err := rand.Read(pw); err != nil {
		return err
	}
	_, err := d.local.PutIfAbsent(cmd.Context(), "demo-db", map[string][]byte{
		"username": []byte("demo"),
		"password": fmt.Appendf(nil, "%x", pw),
	})
	return err
}

func printDevHelp(g *globals, dir string) {
	self := "keywarden"
	if exe, err := os.Executable(); err == nil {
		if wd, err := os.Getwd(); err == nil {
			if rel, err := filepath.Rel(wd, exe); err == nil && !strings.HasPrefix(rel, "..") {
				self = "./" + rel
			}
		}
	}
	dd := ""
	if dir != defaultDevDataDir {
		dd = " --data-dir " + dir
	}
	fmt.Fprintf(g.stdout, `Keywarden dev is running; its state is in %[2]s (kept across restarts).
Try it from another shell in this directory:
  %[1]s token%[3]s --namespace demo --service-account app > demo.token
  %[1]s get%[3]s demo-db --token-file demo.token
  %[1]s watch%[3]s demo-db --token-file demo.token      # then, in a third shell:
  %[1]s secret%[3]s put demo-db username=demo password=rotated
  %[1]s token%[3]s --namespace demo --service-account other | %[1]s get%[3]s demo-db --token -
  %[1]s grant%[3]s explain --namespace demo --service-account other --secret demo-db
Grants: edit %[2]s/grants.yaml (reloaded live). Stop with Ctrl-C.
`, self, dir, dd)
}
