package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newServeCommand(g *globals) *cobra.Command {
	var configPath, healthAddr, nodeName string
	var check bool
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the node daemon",
		Long: `Run the Keywarden node daemon with the given config file (YAML; unknown keys are
rejected). The README's Configuration section lists every key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return usagef("--config is required")
			}
			cfg, err := loadConfigFile(configPath, configOverrides{NodeName: nodeName})
			if err != nil {
				return err
			}
			if check {
				_, err := fmt.Fprintf(g.stdout, "config %s is valid\n", configPath)
				return err
			}
			if healthAddr != "" {
				cfg.HealthAddr = healthAddr
			}
			return serve(cmd, g, cfg, nil, nil)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "config file (required)")
	cmd.Flags().BoolVar(&check, "check", false, "validate the config (with the other flags applied) and exit: 0 when it would start, 1 with every problem listed")
	cmd.Flags().StringVar(&nodeName, "node-name", "", "this node's name (the DaemonSet passes spec.nodeName from the downward API); overrides nodeName")
	cmd.Flags().StringVar(&healthAddr, "health-addr", "", "serve /healthz, /readyz and /metrics on host:port (\"off\" to disable); overrides health.addr")
	return cmd
}

// serve builds a daemon from cfg and runs it until the command's context ends. prepare, when
// set, runs before any listener is up (so no caller can see the daemon before it is done);
// onReady once the daemon is ready.
func serve(cmd *cobra.Command, g *globals, cfg config, prepare, onReady func(*daemon)) error {
	setUmask()
	log := newLogger(g.stderr, cfg.Log.Level, cfg.Log.Format)
	d, err := newDaemon(cfg, log)
	if err != nil {
		return err
	}
	defer d.close()
	if prepare != nil {
		prepare(d)
	}
	var ready func()
	if onReady != nil {
		ready = func() { onReady(d) }
	}
	if err := d.run(cmd.Context(), version, ready); err != nil {
		return err
	}
	log.Info("keywarden stopped")
	return nil
}
