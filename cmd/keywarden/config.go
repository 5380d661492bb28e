package main

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/broker/source/vault"
	"github.com/keywarden/keywarden/crypto"
)

// rawConfig is the config file as written by an operator. Unknown keys are rejected.
type rawConfig struct {
	DataDir     string      `json:"dataDir"`
	Socket      rawSocket   `json:"socket"`
	AdminSocket rawSocket   `json:"adminSocket"`
	Health      rawHealth   `json:"health"`
	Identity    rawIdentity `json:"identity"`
	Grants      rawGrants   `json:"grants"`
	KEK         rawKEK      `json:"kek"`
	Sources     rawSources  `json:"sources"`
	Log         rawLog      `json:"log"`
	Limits      rawLimits   `json:"limits"`
	Store       rawStore    `json:"store"`
	Rotation    rawRotation `json:"rotation"`
	NodeName    string      `json:"nodeName"` // from the downward API: spec.nodeName

	Kubernetes rawKubernetes `json:"kubernetes"` // kubernetes.go
	Admin      rawAdmin      `json:"admin"`      // admin_api.go
	Audit      rawAudit      `json:"audit"`      // auditlog.go

	Vault rawVault `json:"vault"` // vault.go

	Metrics rawMetrics `json:"metrics"` // metrics.go

	CSI rawCSI `json:"csi"` // csi.go
}

type rawSocket struct {
	Path string `json:"path"`
	Mode string `json:"mode"`
}

type rawHealth struct {
	Addr string `json:"addr"`
	// Pprof serves net/http/pprof at /debug/pprof/ on the health address, to loopback peers
	// only (profiling a node under load; off by default).
	Pprof bool `json:"pprof"`
}

type rawIdentity struct {
	Issuer            string   `json:"issuer"`
	Audiences         []string `json:"audiences"`
	JWKSFile          string   `json:"jwksFile"`
	DevIssuerKeyFile  string   `json:"devIssuerKeyFile"`
	TrustDomain       string   `json:"trustDomain"`
	Leeway            string   `json:"leeway"`
	MaxLifetime       string   `json:"maxLifetime"`
	RequirePodBinding *bool    `json:"requirePodBinding"`
	rawIdentityRemote          // identity.go: jwksURL, discoveryURL, caFile, mode, nodeBinding
}

type rawGrants struct {
	File           string `json:"file"`
	ReloadInterval string `json:"reloadInterval"`
	Kubernetes     bool   `json:"kubernetes"` // AccessGrant objects through an informer
}

type rawKEK struct {
	LocalKeysetFile string `json:"localKeysetFile"`
	Provider        string `json:"provider"` // local (default) or transit: vault.go
}

type rawSources struct {
	Local rawLocal `json:"local"`
}

type rawLocal struct {
	Enabled *bool `json:"enabled"`
}

type rawLog struct {
	Level  string `json:"level"`
	Format string `json:"format"`
}

type rawLimits struct {
	MaxRecvMsgBytes       int    `json:"maxRecvMsgBytes"`
	MaxConcurrentStreams  uint32 `json:"maxConcurrentStreams"`
	MaxWatchesPerWorkload int    `json:"maxWatchesPerWorkload"`
	MaxWatches            int    `json:"maxWatches"`
}

type rawStore struct {
	LockTimeout string `json:"lockTimeout"`
}

type rawRotation struct {
	PollInterval string `json:"pollInterval"`
	MaxStale     string `json:"maxStale"`
}

// config is the typed daemon configuration, shared by `serve` and `dev`. Each section is
// typed next to its raw form: identity.go, kubernetes.go, auditlog.go, admin_api.go,
// vault.go and csi.go; the small ones are here.
type config struct {
	DataDir     string
	NodeName    string // the node this daemon serves (downward API: spec.nodeName)
	Socket      socketConfig
	AdminSocket socketConfig
	HealthAddr  string
	HealthPprof bool // health.pprof: /debug/pprof/ for loopback peers

	Identity identityConfig
	Grants   grantsConfig
	KEK      kekConfig
	Sources  sourcesConfig
	Store    storeConfig
	Rotation rotationConfig
	Limits   limitsConfig
	Log      logConfig

	Kubernetes kubernetesConfig
	Admin      adminConfig
	Audit      auditConfig

	Vault *vault.Config // nil when Vault is not configured; Logger/Clock/stores set at wiring

	Metrics metricsConfig

	CSI csiConfig
}

type socketConfig struct {
	Path string
	Mode fs.FileMode
}

type grantsConfig struct {
	File           string
	ReloadInterval time.Duration
	Kubernetes     bool // AccessGrant objects through an informer
}

type kekConfig struct {
	File     string // the local keyset
	Provider string // kekLocal or kekTransit
	Transit  crypto.TransitKEKConfig
}

type sourcesConfig struct {
	Local bool
}

type storeConfig struct {
	LockTimeout time.Duration
}

type rotationConfig struct {
	PollInterval time.Duration
	// MaxStale bounds how long a value without an expiry (KV) is served unconfirmed while its
	// source is unreachable, in memory and after a restart (rotate.Config.MaxStale).
	MaxStale time.Duration
}

type limitsConfig struct {
	MaxRecvMsgSize        int
	MaxConcurrentStreams  uint32
	MaxWatchesPerWorkload int // 0: the server's default
	MaxWatches            int // 0: the server's default
}

type logConfig struct {
	Level  string
	Format string
}

// Defaults for `serve`.
const (
	defaultDataDir     = "/var/lib/keywarden"
	defaultSocket      = "/run/keywarden/keywarden.sock"
	defaultAdminSocket = "/run/keywarden/admin/admin.sock" // its own 0700 directory: pods mount /run/keywarden
	defaultHealthAddr  = "127.0.0.1:9464"
	defaultTrustDomain = "cluster.local"
)

// configOverrides are the command-line values that take precedence over the file. They are
// applied before validation, so a file that leaves a required key to the command line (the
// node name from the downward API, in a ConfigMap shared by every node) still validates.
type configOverrides struct {
	NodeName string
}

// loadConfigFile reads and validates a config file.
func loadConfigFile(path string, o configOverrides) (config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return config{}, fmt.Errorf("read config: %w", err)
	}
	return parseConfigWith(data, o)
}

// parseConfig decodes a config document strictly (unknown or duplicate keys are errors) and
// turns it into a typed config.
func parseConfig(data []byte) (config, error) { return parseConfigWith(data, configOverrides{}) }

func parseConfigWith(data []byte, o configOverrides) (config, error) {
	if len(data) > 1<<20 {
		return config{}, errors.New("config: file is larger than 1 MiB")
	}
	var raw rawConfig
	if err := yaml.UnmarshalStrict(data, &raw); err != nil {
		return config{}, fmt.Errorf("config: %w", err)
	}
	if o.NodeName != "" {
		raw.NodeName = o.NodeName
	}
	return raw.typed()
}

func (r rawConfig) typed() (config, error) {
	c := config{
		DataDir:     or(r.DataDir, defaultDataDir),
		NodeName:    r.NodeName,
		Socket:      socketConfig{Path: or(r.Socket.Path, defaultSocket)},
		AdminSocket: socketConfig{Path: or(r.AdminSocket.Path, defaultAdminSocket)},
		HealthAddr:  or(r.Health.Addr, defaultHealthAddr),
		HealthPprof: r.Health.Pprof,
		Grants:      grantsConfig{File: r.Grants.File},
		KEK:         kekConfig{File: r.KEK.LocalKeysetFile},
		Sources:     sourcesConfig{Local: r.Sources.Local.Enabled != nil && *r.Sources.Local.Enabled},
		Limits: limitsConfig{MaxRecvMsgSize: r.Limits.MaxRecvMsgBytes, MaxConcurrentStreams: r.Limits.MaxConcurrentStreams,
			MaxWatchesPerWorkload: r.Limits.MaxWatchesPerWorkload, MaxWatches: r.Limits.MaxWatches},
		Log: logConfig{Level: or(r.Log.Level, "info"), Format: or(r.Log.Format, "json")},
	}
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	var err error
	// Every workload call carries a pod-bound token that is verified before anything else, so
	// the socket's mode is not the access control; 0666 lets pods that do not run as root (most)
	// use the socket bound into their volume. Execute bits mean nothing on a socket: refused.
	if c.Socket.Mode, err = parseMode(r.Socket.Mode, 0o660); err != nil || c.Socket.Mode&0o111 != 0 {
		fail("socket.mode", "want an octal mode no wider than 0666, such as \"0666\" (pods as any user) or \"0660\"; got %q", r.Socket.Mode)
	}
	if c.AdminSocket.Mode, err = parseMode(r.AdminSocket.Mode, 0o600); err != nil || c.AdminSocket.Mode&0o177 != 0 {
		fail("adminSocket.mode", "the admin socket must be owner-only: use \"0600\"; got %q", r.AdminSocket.Mode)
	}
	for _, p := range []struct{ field, path string }{{"dataDir", c.DataDir}, {"socket.path", c.Socket.Path}, {"adminSocket.path", c.AdminSocket.Path}} {
		if !filepath.IsAbs(p.path) {
			fail(p.field, "must be an absolute path; got %q", p.path)
		}
	}
	if c.Socket.Path == c.AdminSocket.Path {
		fail("adminSocket.path", "must differ from socket.path")
	}
	if c.HealthAddr != "off" {
		if _, _, err := net.SplitHostPort(c.HealthAddr); err != nil {
			fail("health.addr", "want host:port or \"off\"; got %q", c.HealthAddr)
		}
	}
	r.typedIdentity(&c, fail)
	if c.Identity.TrustDomain, err = spiffeid.TrustDomainFromString(or(r.Identity.TrustDomain, defaultTrustDomain)); err != nil {
		fail("identity.trustDomain", "%v", err)
	}
	durations := []struct {
		field string
		raw   string
		def   time.Duration
		dst   *time.Duration
	}{
		{"identity.leeway", r.Identity.Leeway, 30 * time.Second, &c.Identity.Leeway},
		{"identity.maxLifetime", r.Identity.MaxLifetime, 24 * time.Hour, &c.Identity.MaxLifetime},
		{"grants.reloadInterval", r.Grants.ReloadInterval, 2 * time.Second, &c.Grants.ReloadInterval},
		{"store.lockTimeout", r.Store.LockTimeout, 5 * time.Second, &c.Store.LockTimeout},
		{"rotation.pollInterval", r.Rotation.PollInterval, 30 * time.Second, &c.Rotation.PollInterval},
		{"rotation.maxStale", r.Rotation.MaxStale, rotate.DefaultMaxStale, &c.Rotation.MaxStale},
	}
	for _, d := range durations {
		if d.raw == "" {
			*d.dst = d.def
			continue
		}
		v, err := time.ParseDuration(d.raw)
		if err != nil || v <= 0 {
			fail(d.field, "want a positive duration such as \"30s\" or \"5m\"; got %q", d.raw)
			continue
		}
		*d.dst = v
	}
	if c.KEK.File == "" {
		c.KEK.File = filepath.Join(c.DataDir, "kek.json")
	}
	if c.Log.Level != "debug" && c.Log.Level != "info" && c.Log.Level != "warn" && c.Log.Level != "error" {
		fail("log.level", "want debug, info, warn or error; got %q", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		fail("log.format", "want json or text; got %q", c.Log.Format)
	}
	if c.Limits.MaxRecvMsgSize < 0 || c.Limits.MaxRecvMsgSize > 16<<20 {
		fail("limits.maxRecvMsgBytes", "want 0 (default) to 16777216; got %d", c.Limits.MaxRecvMsgSize)
	}
	if c.Limits.MaxWatchesPerWorkload < 0 {
		fail("limits.maxWatchesPerWorkload", "want 0 (default %d) or a positive number of streams; got %d", server.DefaultMaxWatchesPerWorkload, c.Limits.MaxWatchesPerWorkload)
	}
	if c.Limits.MaxWatches < 0 {
		fail("limits.maxWatches", "want 0 (default %d) or a positive number of streams; got %d", server.DefaultMaxWatches, c.Limits.MaxWatches)
	}
	// A per-workload cap above the total would let one workload take every stream.
	if total := cmp.Or(c.Limits.MaxWatches, server.DefaultMaxWatches); c.Limits.MaxWatchesPerWorkload > total {
		fail("limits.maxWatchesPerWorkload", "at most limits.maxWatches (%d); got %d: lower it or raise limits.maxWatches", total, c.Limits.MaxWatchesPerWorkload)
	}
	r.typedKubernetes(&c, fail)
	r.typedAudit(&c, fail)
	r.typedAdminTCP(&c, fail)
	r.typedVault(&c, fail)
	c.Metrics = metricsConfig(r.Metrics)
	r.typedCSI(&c, fail)
	// Checked here rather than only when the parts are built, so `serve --check` (and the
	// chart's test of its rendered config) catches them before a pod crashloops.
	if c.Identity.Leeway > identity.MaxLeeway {
		fail("identity.leeway", "at most %s; got %s", identity.MaxLeeway, c.Identity.Leeway)
	}
	if !c.Sources.Local && c.Vault == nil {
		fail("sources", "no secret source is enabled: set sources.local.enabled or the vault section")
	}
	return c, errors.Join(errs...)
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func parseMode(s string, def fs.FileMode) (fs.FileMode, error) {
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("bad mode %q", s)
	}
	return fs.FileMode(v), nil
}
