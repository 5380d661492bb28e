package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

const minimalConfig = `
nodeName: node-1
identity:
  issuer: https://kubernetes.default.svc
  jwksFile: /etc/keywarden/jwks.json
sources:
  local: {enabled: true}
`

func TestParseConfig_defaults(t *testing.T) {
	c, err := parseConfig([]byte(minimalConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != defaultDataDir || c.Socket.Path != defaultSocket || c.Socket.Mode != 0o660 || c.AdminSocket.Mode != 0o600 ||
		c.HealthAddr != defaultHealthAddr || c.Identity.TrustDomain.String() != "cluster.local" || !c.Identity.RequirePodBinding ||
		c.Identity.Leeway != 30*time.Second || c.Store.LockTimeout != 5*time.Second || c.KEK.File != defaultDataDir+"/kek.json" || !c.Sources.Local {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseConfig_watchLimits(t *testing.T) {
	tests := []struct {
		name, doc          string
		perWorkload, total int
	}{
		{"unset takes the server's defaults", minimalConfig, 0, 0},
		{"zero takes the server's defaults", minimalConfig + "limits: {maxWatchesPerWorkload: 0, maxWatches: 0}\n", 0, 0},
		{"set", minimalConfig + "limits: {maxWatchesPerWorkload: 4, maxWatches: 100}\n", 4, 100},
		{"per workload alone", minimalConfig + "limits: {maxWatchesPerWorkload: 64}\n", 64, 0},
		{"per workload at a raised total", minimalConfig + "limits: {maxWatchesPerWorkload: 4096, maxWatches: 8192}\n", 4096, 8192},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			// What the workload server gets, so a key that is parsed but not wired fails here.
			l := c.Limits.workload()
			if l.MaxWatchesPerWorkload != tc.perWorkload || l.MaxWatches != tc.total {
				t.Fatalf("workload server limits: per workload %d, total %d; want %d, %d", l.MaxWatchesPerWorkload, l.MaxWatches, tc.perWorkload, tc.total)
			}
		})
	}
}

func TestParseConfig_nodeNameFromCommandLine(t *testing.T) {
	// A ConfigMap shared by every node has no nodeName; the DaemonSet passes --node-name.
	doc := strings.Replace(minimalConfig, "nodeName: node-1\n", "", 1) + "csi: {socket: /csi.sock}\n"
	if _, err := parseConfig([]byte(doc)); err == nil || !strings.Contains(err.Error(), "nodeName") {
		t.Fatalf("without --node-name: err = %v, want the nodeName error", err)
	}
	c, err := parseConfigWith([]byte(doc), configOverrides{NodeName: "node-7"})
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "node-7" {
		t.Fatalf("NodeName = %q, want node-7", c.NodeName)
	}
	c, err = parseConfigWith([]byte(minimalConfig), configOverrides{NodeName: "node-7"})
	if err != nil || c.NodeName != "node-7" {
		t.Fatalf("override of a file value: %q, %v", c.NodeName, err)
	}
}

func TestCSIAudience_firstIdentityAudience(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{{nil, ""}, {[]string{"kw-prod"}, "kw-prod"}, {[]string{"a", "b"}, "a"}} {
		if got := csiAudience(tc.in); got != tc.want {
			t.Errorf("csiAudience(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseConfig_badInput(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"unknown top-level key", minimalConfig + "dataDri: /x\n", `unknown field "dataDri"`},
		{"unknown nested key", minimalConfig + "socket: {pth: /x}\n", `unknown field "pth"`},
		{"duplicate key", minimalConfig + "dataDir: /a\ndataDir: /b\n", `"dataDir" already set`},
		{"not yaml", "{{{", "config:"},
		{"wrong type", minimalConfig + "dataDir: [1]\n", "config:"},
		{"missing issuer", "identity: {jwksFile: /x}\n", "identity.issuer: is required"},
		{"no keys", "identity: {issuer: x}\n", "set exactly one of"},
		{"both keys", "identity: {issuer: x, jwksFile: /a, devIssuerKeyFile: /b}\n", "set exactly one of"},
		{"leeway above 60s", strings.Replace(minimalConfig, "identity:\n", "identity:\n  leeway: 90s\n", 1), "identity.leeway: at most 1m0s"},
		{"no source", strings.Replace(minimalConfig, "sources:\n  local: {enabled: true}\n", "", 1), "no secret source is enabled"},
		{"executable socket", minimalConfig + "socket: {mode: \"0777\"}\n", "socket.mode"},
		{"world-executable socket", minimalConfig + "socket: {mode: \"0661\"}\n", "socket.mode"},
		{"bad mode", minimalConfig + "socket: {mode: \"rw\"}\n", "socket.mode"},
		{"group admin socket", minimalConfig + "adminSocket: {mode: \"0660\"}\n", "adminSocket.mode"},
		{"relative data dir", minimalConfig + "dataDir: data\n", "dataDir: must be an absolute path"},
		{"same sockets", minimalConfig + "socket: {path: /s}\nadminSocket: {path: /s}\n", "must differ"},
		{"bad health", minimalConfig + "health: {addr: nope}\n", "health.addr"},
		{"bad duration", minimalConfig + "grants: {reloadInterval: 5 minutes}\n", "grants.reloadInterval"},
		{"negative duration", minimalConfig + "store: {lockTimeout: -1s}\n", "store.lockTimeout"},
		{"bad trust domain", "identity: {issuer: x, jwksFile: /a, trustDomain: \"Bad Domain\"}\nsources: {local: {enabled: true}}\n", "identity.trustDomain"},
		{"bad log level", minimalConfig + "log: {level: loud}\n", "log.level"},
		{"huge limit", minimalConfig + "limits: {maxRecvMsgBytes: 99999999}\n", "limits.maxRecvMsgBytes"},
		{"negative watches per workload", minimalConfig + "limits: {maxWatchesPerWorkload: -1}\n", "limits.maxWatchesPerWorkload: want 0 (default 16) or a positive number"},
		{"negative watches", minimalConfig + "limits: {maxWatches: -1}\n", "limits.maxWatches: want 0 (default 2048) or a positive number"},
		{"watches per workload above total", minimalConfig + "limits: {maxWatchesPerWorkload: 20, maxWatches: 10}\n", "limits.maxWatchesPerWorkload: at most limits.maxWatches (10); got 20"},
		{"watches per workload above default total", minimalConfig + "limits: {maxWatchesPerWorkload: 4096}\n", "limits.maxWatchesPerWorkload: at most limits.maxWatches (2048); got 4096"},
		{"fractional watches", minimalConfig + "limits: {maxWatches: 1.5}\n", "config:"},
		{"too large", strings.Repeat("#", 1<<20+1), "larger than 1 MiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseConfig_reportsEveryProblem(t *testing.T) {
	_, err := parseConfig([]byte("identity: {issuer: x, jwksFile: /a}\nlog: {level: loud, format: xml}\n"))
	if err == nil || !strings.Contains(err.Error(), "log.level") || !strings.Contains(err.Error(), "log.format") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(minimalConfig))
	f.Add([]byte("socket: {mode: \"0777\"}"))
	f.Add([]byte("identity: {leeway: 1s}"))
	f.Add([]byte(vaultBase + "vault: {address: http://v, namespace: team-a/prod, auth: {role: r, namespace: team-a}}\n"))
	f.Add([]byte(vaultBase + "vault: {address: http://v, auth: {method: approle, roleIDFile: /r, secretIDFile: /s, secretIDWrapped: true}}\n"))
	f.Add([]byte(vaultBase + "metrics: {perSecretLabels: true}\n"))
	f.Add([]byte(vaultBase + "vault: {address: https://v, auth: {method: cert, role: node, clientCertFile: /c, clientKeyFile: /k}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err != nil {
			return
		}
		if c.Socket.Mode&0o111 != 0 || c.AdminSocket.Mode&0o177 != 0 || c.Identity.Issuer == "" {
			t.Fatalf("accepted an unsafe config: %+v", c)
		}
	})
}

func TestParseConfig_identityBadInput(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"two key sources", "nodeName: node-1\nidentity: {issuer: x, jwksFile: /a, jwksURL: https://b}\n", "set exactly one of"},
		{"no key source", "nodeName: node-1\nidentity: {issuer: x}\n", "set exactly one of"},
		{"tokenreview with keys", "nodeName: node-1\nidentity: {issuer: x, mode: tokenreview, jwksFile: /a}\n", "mode tokenreview asks the apiserver"},
		{"bad mode", "nodeName: node-1\nidentity: {issuer: x, mode: oidc, jwksFile: /a}\n", "identity.mode"},
		{"plain http discovery", "nodeName: node-1\nidentity: {issuer: x, discoveryURL: http://apiserver}\n", "identity.discoveryURL: want an https URL"},
		{"node binding without node", "identity: {issuer: x, jwksFile: /a}\n", "nodeName: is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	c, err := parseConfig([]byte("identity: {issuer: x, mode: tokenreview, nodeBinding: false}\nsources: {local: {enabled: true}}\n"))
	if err != nil || c.Identity.Mode != identityModeTokenReview || c.Identity.NodeBinding {
		t.Fatalf("tokenreview without binding: %+v %v", c.Identity, err)
	}
}

func TestServe_check(t *testing.T) {
	dir := t.TempDir()
	write := func(name, doc string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shared := write("shared.yaml", strings.Replace(minimalConfig, "nodeName: node-1\n", "", 1)+"csi: {socket: /csi.sock}\n")
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"valid", []string{"serve", "--check", "--config", write("ok.yaml", minimalConfig)}, 0, "is valid"},
		{"node name from the command line", []string{"serve", "--check", "--config", shared, "--node-name", "n1"}, 0, "is valid"},
		{"node name missing", []string{"serve", "--check", "--config", shared}, 1, "nodeName: is required"},
		{"unknown key", []string{"serve", "--check", "--config", write("typo.yaml", minimalConfig+"grnts: {}\n")}, 1, `unknown field "grnts"`},
		{"missing file", []string{"serve", "--check", "--config", dir + "/none.yaml"}, 1, "read config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := cli(t, "", tc.args...)
			if code != tc.wantCode || !strings.Contains(out+errOut, tc.wantOut) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.wantCode, tc.wantOut)
			}
		})
	}
}

func TestParseConfig_socketModeForPodsOfAnyUID(t *testing.T) {
	c, err := parseConfig([]byte(minimalConfig + "socket: {mode: \"0666\"}\n"))
	if err != nil || c.Socket.Mode != 0o666 {
		t.Fatalf("socket mode 0666: %v, %v", c.Socket.Mode, err)
	}
}
