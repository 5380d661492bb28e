package main

import (
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
	if c.DataDir != defaultDataDir || c.Socket != defaultSocket || c.SocketMode != 0o660 || c.AdminSocketMode != 0o600 ||
		c.HealthAddr != defaultHealthAddr || c.TrustDomain.String() != "cluster.local" || !c.RequirePodBinding ||
		c.Leeway != 30*time.Second || c.LockTimeout != 5*time.Second || c.KEKFile != defaultDataDir+"/kek.json" || !c.LocalSource {
		t.Fatalf("defaults: %+v", c)
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
		{"world socket", minimalConfig + "socket: {mode: \"0666\"}\n", "socket.mode"},
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
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err != nil {
			return
		}
		if c.SocketMode&0o117 != 0 || c.AdminSocketMode&0o177 != 0 || c.Issuer == "" {
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
	c, err := parseConfig([]byte("identity: {issuer: x, mode: tokenreview, nodeBinding: false}\n"))
	if err != nil || c.IdentityMode != identityModeTokenReview || c.NodeBinding {
		t.Fatalf("tokenreview without binding: %+v %v", c.identityRemote, err)
	}
}
