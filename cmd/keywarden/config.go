package main

import (
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
	rawNode                 // identity.go: nodeName

	// admin_wiring.go
	Kubernetes rawKubernetes `json:"kubernetes"`
	Admin      rawAdmin      `json:"admin"`
	Audit      rawAudit      `json:"audit"`

	Vault rawVault `json:"vault"` // vault.go

	CSI rawCSI `json:"csi"` // csi.go
}

type rawSocket struct {
	Path string `json:"path"`
	Mode string `json:"mode"`
}

type rawHealth struct {
	Addr string `json:"addr"`
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
	MaxRecvMsgBytes      int    `json:"maxRecvMsgBytes"`
	MaxConcurrentStreams uint32 `json:"maxConcurrentStreams"`
}

type rawStore struct {
	LockTimeout string `json:"lockTimeout"`
}

type rawRotation struct {
	PollInterval string `json:"pollInterval"`
}

// config is the typed daemon configuration, shared by `serve` and `dev`.
type config struct {
	DataDir         string
	Socket          string
	SocketMode      fs.FileMode
	AdminSocket     string
	AdminSocketMode fs.FileMode
	HealthAddr      string

	Issuer            string
	Audiences         []string
	JWKSFile          string
	DevIssuerKeyFile  string
	TrustDomain       spiffeid.TrustDomain
	Leeway            time.Duration
	MaxLifetime       time.Duration
	RequirePodBinding bool
	identityRemote    // identity.go

	GrantsFile     string
	GrantsInterval time.Duration

	KEKFile     string
	LocalSource bool
	LockTimeout time.Duration

	PollInterval time.Duration

	MaxRecvMsgSize       int
	MaxConcurrentStreams uint32

	LogLevel  string
	LogFormat string

	i7Config // kubernetes, admin TCP, audit: admin_wiring.go

	vaultConfig // vault source and KEK provider: vault.go

	csiConfig // the CSI node driver: csi.go
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
		DataDir:              or(r.DataDir, defaultDataDir),
		Socket:               or(r.Socket.Path, defaultSocket),
		AdminSocket:          or(r.AdminSocket.Path, defaultAdminSocket),
		HealthAddr:           or(r.Health.Addr, defaultHealthAddr),
		Issuer:               r.Identity.Issuer,
		Audiences:            r.Identity.Audiences,
		JWKSFile:             r.Identity.JWKSFile,
		DevIssuerKeyFile:     r.Identity.DevIssuerKeyFile,
		RequirePodBinding:    r.Identity.RequirePodBinding == nil || *r.Identity.RequirePodBinding,
		GrantsFile:           r.Grants.File,
		KEKFile:              r.KEK.LocalKeysetFile,
		LocalSource:          r.Sources.Local.Enabled != nil && *r.Sources.Local.Enabled,
		MaxRecvMsgSize:       r.Limits.MaxRecvMsgBytes,
		MaxConcurrentStreams: r.Limits.MaxConcurrentStreams,
		LogLevel:             or(r.Log.Level, "info"),
		LogFormat:            or(r.Log.Format, "json"),
	}
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	var err error
	// Every workload call carries a pod-bound token that is verified before anything else, so
	// the socket's mode is not the access control; 0666 lets pods that do not run as root (most)
	// use the socket bound into their volume. Execute bits mean nothing on a socket: refused.
	if c.SocketMode, err = parseMode(r.Socket.Mode, 0o660); err != nil || c.SocketMode&0o111 != 0 {
		fail("socket.mode", "want an octal mode no wider than 0666, such as \"0666\" (pods as any user) or \"0660\"; got %q", r.Socket.Mode)
	}
	if c.AdminSocketMode, err = parseMode(r.AdminSocket.Mode, 0o600); err != nil || c.AdminSocketMode&0o177 != 0 {
		fail("adminSocket.mode", "the admin socket must be owner-only: use \"0600\"; got %q", r.AdminSocket.Mode)
	}
	for _, p := range []struct{ field, path string }{{"dataDir", c.DataDir}, {"socket.path", c.Socket}, {"adminSocket.path", c.AdminSocket}} {
		if !filepath.IsAbs(p.path) {
			fail(p.field, "must be an absolute path; got %q", p.path)
		}
	}
	if c.Socket == c.AdminSocket {
		fail("adminSocket.path", "must differ from socket.path")
	}
	if c.HealthAddr != "off" {
		if _, _, err := net.SplitHostPort(c.HealthAddr); err != nil {
			fail("health.addr", "want host:port or \"off\"; got %q", c.HealthAddr)
		}
	}
	if c.Issuer == "" {
		fail("identity.issuer", "is required: the `iss` of the tokens to accept (the cluster's service-account issuer)")
	}
	r.typedIdentity(&c, fail)
	if c.TrustDomain, err = spiffeid.TrustDomainFromString(or(r.Identity.TrustDomain, defaultTrustDomain)); err != nil {
		fail("identity.trustDomain", "%v", err)
	}
	durations := []struct {
		field string
		raw   string
		def   time.Duration
		dst   *time.Duration
	}{
		{"identity.leeway", r.Identity.Leeway, 30 * time.Second, &c.Leeway},
		{"identity.maxLifetime", r.Identity.MaxLifetime, 24 * time.Hour, &c.MaxLifetime},
		{"grants.reloadInterval", r.Grants.ReloadInterval, 2 * time.Second, &c.GrantsInterval},
		{"store.lockTimeout", r.Store.LockTimeout, 5 * time.Second, &c.LockTimeout},
		{"rotation.pollInterval", r.Rotation.PollInterval, 30 * time.Second, &c.PollInterval},
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
	if c.KEKFile == "" {
		c.KEKFile = filepath.Join(c.DataDir, "kek.json")
	}
	if c.LogLevel != "debug" && c.LogLevel != "info" && c.LogLevel != "warn" && c.LogLevel != "error" {
		fail("log.level", "want debug, info, warn or error; got %q", c.LogLevel)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		fail("log.format", "want json or text; got %q", c.LogFormat)
	}
	if c.MaxRecvMsgSize < 0 || c.MaxRecvMsgSize > 16<<20 {
		fail("limits.maxRecvMsgBytes", "want 0 (default) to 16777216; got %d", c.MaxRecvMsgSize)
	}
	r.typedI7(&c, fail)
	r.typedVault(&c, fail)
	r.typedCSI(&c, fail)
	// Checked here rather than only when the parts are built, so `serve --check` (and the
	// chart's test of its rendered config) catches them before a pod crashloops.
	if c.Leeway > identity.MaxLeeway {
		fail("identity.leeway", "at most %s; got %s", identity.MaxLeeway, c.Leeway)
	}
	if !c.LocalSource && c.Vault == nil {
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
